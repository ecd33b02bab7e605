"""Embedding: its name (the trigger word), the init text and the vectors per token, with how the init text
tokenizes into the vectors; asks before reusing a name that already has a run."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, Label, Select, Static

from core.embeddings.vectors import MAX_NAME_LENGTH, name_problem, trigger_problems
from core.runs import api as runapi
from core.training.kinds import KIND_CHOICES, KIND_HELP
from tui.screens.base import WizardScreen
from tui.screens.dialogs import ConfirmModal
from tui.widgets.inputs import OrderedInput


def vector_plan(pieces: list[str], n_vectors: int) -> list[str]:
    """Which init token starts each vector; "zeros" without init text."""
    from core.embeddings.vectors import init_token_plan

    return [pieces[i] for i in init_token_plan(len(pieces), n_vectors)] if pieces else ["zeros"] * n_vectors


class EmbeddingScreen(WizardScreen):
    STAGE = "embedding"

    def compose_body(self) -> ComposeResult:
        with Vertical(classes="body narrow"):
            yield Label("Name: the word you will type in prompts, and the file name", classes="field-label")
            yield OrderedInput(self.state.name, placeholder="my-style", id="emb-name", max_length=MAX_NAME_LENGTH,
                               name="Name")
            yield Label("Init text: what the vectors start from ('*' like A1111; empty = zeros)",
                        classes="field-label")
            yield OrderedInput(self.state.init_text, id="emb-init")
            yield Label("Vectors per token (1-75): more learn more detail but use more of the 75-token prompt",
                        classes="field-label")
            yield OrderedInput(str(self.state.vectors), type="integer", id="emb-vectors", max_length=2,
                               name="Vectors per token")
            yield Static("", id="emb-plan")
            yield Label("Kind: what the embedding is for", classes="field-label")
            yield Select(KIND_CHOICES, value=self.state.train.get("kind", "subject"), allow_blank=False,
                         id="emb-kind", compact=True)
            yield Static(KIND_HELP[self.state.train.get("kind", "subject")], id="emb-kind-help", classes="hint")

    def on_mount(self) -> None:
        self.query_one("#emb-name", Input).focus()
        self._update_plan()

    @on(Select.Changed, "#emb-kind")
    def _kind(self, event: Select.Changed) -> None:
        """The kind; a tag template the Captions screen proposed follows it (subject_tags, style_tags)."""
        from core.training.templates import TAG_TEMPLATES

        kind = str(event.value)
        self.state.train["kind"] = kind
        if self.state.train.get("template") in TAG_TEMPLATES.values():
            self.state.train["template"] = TAG_TEMPLATES[kind]
        self.query_one("#emb-kind-help", Static).update(KIND_HELP[kind])

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if event.input.id == "emb-name":
            self.state.name = event.value.strip()
        elif event.input.id == "emb-init":
            self.state.init_text = event.value
        elif event.input.id == "emb-vectors":
            try:
                self.state.vectors = int(event.value)
            except ValueError:
                pass
        self._update_plan()

    def _update_plan(self) -> None:
        widget = self.query_one("#emb-plan", Static)
        problem = self._problem()
        if problem:
            widget.update(f"[red]{problem}[/]")
            return
        from core.tokens import token_pieces

        pieces = token_pieces(self.state.init_text)
        n = self.state.vectors
        plan = vector_plan(pieces, n)
        lines = [f"init text → {len(pieces)} token{'s' if len(pieces) != 1 else ''}: "
                 + (" · ".join(pieces) if pieces else "(none)")]
        shown = ", ".join(f"{i + 1}←{p}" for i, p in enumerate(plan[:12])) + (" …" if n > 12 else "")
        lines.append(f"{n} vector{'s' if n != 1 else ''}: {shown}")
        lines.append(f"In prompts, “{self.state.name}” uses {n} of the 75 tokens.")
        if self.state.model_family == "sdxl":
            widths = self.state.text_widths
            parts = (f"a {widths[0]}-wide CLIP-L part and a {widths[1]}-wide bigG part" if len(widths) == 2
                     else "a CLIP-L part and a bigG part")
            lines.append("SDXL: CLIP-L and OpenCLIP bigG split text the same way, so both encoders' vectors start "
                         f"from these tokens: each vector is {parts}, saved as clip_l and clip_g in one file.")
        lines += [f"[yellow]warning: {w}[/]" for w in self.name_warnings()]
        widget.update("\n".join(lines))

    def name_warnings(self) -> list[str]:
        """The trigger-word warnings the trainer would log (a real CLIP word, taken `name_N` tokens), shown at once."""
        try:
            return trigger_problems(None, self.state.name, self.state.vectors)
        except Exception:  # the bundled tokenizer is missing: the trainer still checks with the model's own
            return []

    def _problem(self) -> str | None:
        problem = name_problem(self.state.name)
        if problem:
            return f"Name: {problem}."
        if not 1 <= self.state.vectors <= 75:
            return "Vectors per token must be between 1 and 75."
        warnings = self.name_warnings()
        if warnings:  # diffusers refuses such a file, A1111 hijacks the word: found now, not after model loading
            return f"Name: {warnings[0]}. Pick a made-up word such as 'zxq-{self.state.name.lower()}'."
        return None

    def check(self) -> str | None:
        return self._problem()

    def proceed(self) -> None:
        self.find_same_name(self.state.name)

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def find_same_name(self, name: str) -> list:
        """The runs already trained under this name, read off the UI thread (errors become messages)."""
        return [r for r in runapi.list_runs(self.app.runs_root) if r.name == name]

    def find_same_name_done(self, same: list) -> None:
        if same and not self.state.overwrite:
            def answered(yes: bool | None) -> None:
                if yes:
                    self.state.overwrite = True
                    self.app.next_stage(self.STAGE)

            self.app.push_screen(ConfirmModal(
                f"An embedding named “{self.state.name}” was trained before ({len(same)} run(s)).",
                "Train another with the same name? Files in the new run folder will use this name; "
                "copying it into A1111/ComfyUI later will ask before replacing the old one."), answered)
            return
        self.app.next_stage(self.STAGE)
