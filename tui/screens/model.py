"""Base model: checkpoints found in A1111, ComfyUI and the HF cache, or a typed path; family and size from the header."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from core.models.parts import FAMILY_NAMES
from tui.screens.base import WizardScreen, error_text
from tui.widgets.inputs import PathInput



def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def describe(info) -> str:
    family = FAMILY_NAMES.get(info.family, info.family)
    if info.prediction_type == "v_prediction":  # a diffusers scheduler config or a v_pred marker key said so
        family += " v-prediction"
    text = f"{family} · {info.kind} · {human_size(info.size_bytes)}"
    if info.problem:
        text += f" · cannot use: {info.problem}"
    return text


class ModelScreen(WizardScreen):
    STAGE = "model"
    DEFAULT_CSS = """
    #found { height: 1fr; }
    """
    BINDINGS = [Binding("f5", "rescan", "Rescan"), Binding("f3", "browse", "Browse"),
                # a browser keeps f5 (reload) and f3 (find)
                Binding("alt+r", "rescan", "Rescan", show=False), Binding("alt+o", "browse", "Browse", show=False),
                Binding("down", "to_list", show=False, priority=True)]  # priority: in a burst, keys after it follow

    def compose_body(self) -> ComposeResult:
        with Vertical(classes="body"):
            yield Label("Model path (a diffusers folder, .safetensors or .ckpt; f3 browses)", classes="field-label")
            yield PathInput(self.state.model, placeholder="/workspace/models/v1-5-pruned-emaonly.safetensors",
                        id="model-path")
            yield Static("", id="model-info", classes="hint")
            yield Label("Found on this machine", classes="section")
            yield OptionList(id="found")
            yield Static("Searching A1111, ComfyUI, the Hugging Face cache and /workspace…", id="found-status",
                         classes="hint")

    def on_mount(self) -> None:
        self.query_one("#model-path", Input).focus()
        if self.state.model:
            self.inspect(self.state.model)
        self.action_rescan()

    def action_browse(self) -> None:
        from tui.screens.model_browser import ModelBrowser, browse_start

        def picked(path: str | None) -> None:
            if path:
                field = self.query_one("#model-path", Input)
                field.value = path
                field.focus()

        self.app.push_screen(ModelBrowser(browse_start(self.state.model)), picked)

    def action_rescan(self) -> None:
        self.scan()

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def scan(self) -> list:
        from core.models.find import find_checkpoints

        roots = self.app.finder_roots
        return find_checkpoints(roots, defaults=roots is None)

    def scan_done(self, found: list) -> None:
        from rich.text import Text

        menu = self.query_one("#found", OptionList)
        menu.clear_options()
        for info in found:
            label = Text(f"{info.name}  ·  {describe(info)}  ·  {info.source}\n")
            label.append(f"  {info.path}", style="dim")  # two checkpoints of one name differ here
            menu.add_option(Option(label, id=str(info.path), disabled=not info.usable))
        usable = [i for i, info in enumerate(found) if info.usable]
        if usable:
            menu.highlighted = usable[0]
        self.found_count = len(found)
        self._show_found_status()

    found_count: int | None = None  # None while searching

    def _show_found_status(self) -> None:
        """How to pick a found model, for where the focus is: Enter picks only in the list."""
        if self.found_count is None:
            return
        if not self.found_count:
            text = "No checkpoints found in the usual places. Type the path of yours above."
        elif self.focused is self.query_one("#found"):
            text = f"{self.found_count} found. Enter picks one."
        else:
            text = f"{self.found_count} found. ↓ goes to the list, where Enter picks one."
        self.query_one("#found-status", Static).update(text)

    def on_descendant_focus(self, event) -> None:
        self._show_found_status()

    def action_to_list(self) -> None:
        """↓ in the path field goes to the list of found models (Input has no use for it)."""
        found = self.query_one("#found", OptionList)
        if self.focused is not self.query_one("#model-path") or not found.option_count:
            raise SkipAction()
        self.set_focus(found)

    @on(OptionList.OptionSelected, "#found")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        path = event.option.id or ""
        field = self.query_one("#model-path", Input)
        field.value = path
        field.focus()

    @on(Input.Changed, "#model-path")
    def _typed(self, event: Input.Changed) -> None:
        self.state.model = event.value.strip()
        self.inspect(self.state.model)

    @work(thread=True, exclusive=True, group="inspect", exit_on_error=False)
    def inspect(self, path: str) -> tuple[str, object]:
        """(path, what it is: a CheckpointInfo, or the sentence why it cannot be read)."""
        if not path:
            return path, None
        try:
            return path, inspect_model(path)
        except Exception as exc:  # noqa: BLE001 - a typed path may be anything: said under the field
            return path, error_text(exc)

    def inspect_done(self, result: tuple[str, object]) -> None:
        path, info = result
        if path != self.state.model:
            return  # a newer keystroke won
        widget = self.query_one("#model-info", Static)
        if info is None:
            widget.update("")
        elif isinstance(info, str):
            widget.update(Text(info, style="red"))
        else:
            widget.update(Text(describe(info), style="green" if info.usable else "red"))

    def check(self) -> str | None:
        return None if self.state.model else "Pick a model, or type its path."

    def check_files(self) -> str | None:
        from core.models.parts import text_widths

        try:
            info = inspect_model(self.state.model)
        except Exception as exc:  # noqa: BLE001 - said; Next stays here
            return error_text(exc)
        if not info.usable:
            return f"This model cannot be used: {info.problem or FAMILY_NAMES.get(info.family, info.family)}."
        self.state.model_family = info.family
        self.state.text_widths = list(text_widths(self.state.model, info.family))
        if info.family == "sdxl":  # SDXL's native size; the training screen says why
            for key in ("width", "height"):
                self.state.train.setdefault(key, 1024)
        return None


def inspect_model(path: str):
    """The model's family and size from its header, and for a single .safetensors file whether its parts fit
    together (`core.models.parts`): a file that would fail in the worker's loader is refused here."""
    from dataclasses import replace

    from core.models.find import inspect_checkpoint
    from core.models.parts import single_file_problem

    info = inspect_checkpoint(Path(path))
    if info.usable and info.kind == "safetensors":
        problem = single_file_problem(info.path)
        if problem:
            info = replace(info, problem=problem)
    return info
