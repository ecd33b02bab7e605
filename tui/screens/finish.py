"""Finish: where the files are, copying them into a detected A1111 or ComfyUI embeddings folder, the trigger word
and a diffusers snippet."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.reactive import var
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from core.training.kinds import run_kind, usage_text
from core.runs import api as runapi
from tui.run_view import RunView
from tui.screens.base import WizardScreen, error_text
from tui.screens.dialogs import ConfirmModal
from tui.widgets.image_preview import ImagePreview
from tui import web_links
from core.install import copy_embedding, find_targets, is_sdxl, pick_file
from core.runs.run_events import BEST_BASES
from core.training.image_ranking import read_ranking


def final_files(run_dir: Path) -> RunView:
    """Replay the run's events to learn its final files."""
    view = RunView(run_dir)
    follower = runapi.follow(run_dir)
    for _ in range(1000):
        events = follower.poll()
        if not events:
            break
        view.apply_all(events)
    close = getattr(follower, "close", None)
    if close:
        close()
    return view


def best_checkpoint_files(view: RunView, sdxl: bool) -> list[Path]:
    """The suggested best step's checkpoint files, when it is not the final step and was saved (reads the disk)."""
    step, rel = view.best_step, view.best_checkpoint
    if step is None or step == view.step or not rel or not view.resolve(rel).is_file():
        return []
    st = view.resolve(rel)
    return [st] if sdxl else [st, st.with_suffix(".pt")]


def is_sdxl_embedding(path: Path) -> bool:
    """An SDXL file ({clip_l, clip_g}), from its safetensors header (no torch in the TUI); False if unreadable."""
    try:
        return is_sdxl(path)
    except Exception:
        return False


def diffusers_snippet(model: str, embedding: str, name: str, sdxl: bool = False) -> str:
    loader = "from_single_file" if Path(model).suffix.lower() in (".safetensors", ".ckpt") else "from_pretrained"
    if sdxl:  # diffusers loads an SDXL embedding with one call per text encoder
        return (
            "import torch\n"
            "from diffusers import StableDiffusionXLPipeline\n"
            "from safetensors.torch import load_file\n\n"
            f'pipe = StableDiffusionXLPipeline.{loader}("{model}", torch_dtype=torch.float16).to("cuda")\n'
            f'state = load_file("{embedding}")\n'
            f'pipe.load_textual_inversion(state["clip_l"], token="{name}", text_encoder=pipe.text_encoder, '
            'tokenizer=pipe.tokenizer)\n'
            f'pipe.load_textual_inversion(state["clip_g"], token="{name}", text_encoder=pipe.text_encoder_2, '
            'tokenizer=pipe.tokenizer_2)\n'
            f'image = pipe("a photo in the style of {name}").images[0]\n'
            'image.save("out.png")'
        )
    return (
        "import torch\n"
        "from diffusers import StableDiffusionPipeline\n\n"
        f'pipe = StableDiffusionPipeline.{loader}("{model}", torch_dtype=torch.float16).to("cuda")\n'
        f'pipe.load_textual_inversion("{embedding}", token="{name}")\n'
        f'image = pipe("a photo in the style of {name}").images[0]\n'
        'image.save("out.png")'
    )


def run_model(run_dir: Path, fallback: str = "") -> str:
    """The model the run trained on, as its config.toml records it (an absolute path), else `fallback` made
    absolute."""
    import tomllib

    try:
        with open(run_dir / "config.toml", "rb") as fh:
            model = tomllib.load(fh).get("model")
    except (OSError, ValueError):
        model = None
    if isinstance(model, str) and model:
        return model
    return str(Path(fallback).expanduser().resolve()) if fallback else "MODEL"


class FinishScreen(WizardScreen):
    STAGE = "finish"
    DEFAULT_CSS = """
    #fin-targets { height: auto; max-height: 6; }
    #fin-sheet { height: 14; }
    #fin-fight { height: auto; }
    .fight-row { height: 8; margin-bottom: 1; }
    .fight-thumb { width: 16; height: 8; }
    .fight-text { width: 1fr; padding-left: 1; }
    .code { background: $boost; padding: 0 1; margin-top: 1; }
    """
    BINDINGS = [
        Binding("c", "copy", "Copy"),  # into the install selected above
        Binding("b", "best", "Best step"),
        Binding("m", "monitor", "Monitor"),
        Binding("t", "train_again", "Train again"),
        Binding("n", "new", "New"),
        Binding("q", "app.quit", "Quit", show=False),  # the footer shows ^q
        Binding("o", "previews_page", "Full size", show=False),  # named by the sheet's label (tui/web_links.py)
        Binding("ctrl+n", "next", "Next", show=False),  # the last stage: nothing comes next
    ]

    loaded: var[dict | None] = var(None, init=False)  # what the load worker read about the run
    targets: var[tuple | None] = var(None, init=False)  # the A1111/ComfyUI/InvokeAI installs found; None: looking
    copy_best: var[bool] = var(False, init=False)  # c copies the suggested best step instead of the final embedding

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(classes="body"):
            yield Label("Files", classes="section")
            yield Static("", id="fin-files")
            yield Label("Copy into a UI's embeddings folder", classes="section")
            yield OptionList(id="fin-targets")
            yield Label("Use it", classes="section")
            yield Static("", id="fin-usage")
            yield Static("", id="fin-snippet", classes="code", markup=False)
            yield Label("Previews by step (previews/sheet.png · o: full size)", classes="section",
                        id="fin-sheet-label")
            yield ImagePreview(id="fin-sheet")
            yield Label("Images that fight the concept", classes="section", id="fin-fight-label")
            yield Vertical(id="fin-fight")

    def on_mount(self) -> None:
        run_dir = Path(self.state.run_dir).expanduser().resolve()  # paths shown absolute: they are copied elsewhere
        self.view = RunView(run_dir)
        self.final_files: list[Path] = []
        self.best_files: list[Path] = []
        self.emb_name = self.state.name
        self.query_one("#fin-files", Static).update(f"Run folder   {run_dir}\nreading the run…")
        self.query_one("#fin-sheet-label").display = self.query_one("#fin-sheet").display = False
        self.query_one("#fin-fight-label").display = self.query_one("#fin-fight").display = False
        self.query_one("#fin-targets", OptionList).focus()
        self.scan_targets()
        self.load_run(run_dir, self.state.name, self.state.model)

    @work(thread=True, exclusive=True, group="finish-load", exit_on_error=False)
    def load_run(self, run_dir: Path, fallback_name: str, fallback_model: str) -> dict:
        """Off the UI thread: replay the event log, read the files' headers, the config and the sheet's presence."""
        error = ""
        try:
            view = final_files(run_dir)
        except Exception as exc:  # noqa: BLE001 - shown; the screen still lists the usual file names
            view, error = RunView(run_dir), error_text(exc)
        name = view.name or fallback_name
        st = view.resolve(view.final_safetensors or f"{name}.safetensors")
        pt = view.resolve(view.final_pt or f"{name}.pt")
        sdxl = is_sdxl_embedding(st)
        loaded = {"run_dir": run_dir, "view": view, "error": error, "name": name, "st": st, "pt": pt, "sdxl": sdxl,
                  "best": best_checkpoint_files(view, sdxl), "model": run_model(run_dir, fallback_model),
                  "sheet": run_dir / "previews" / "sheet.png", "kind": run_kind(run_dir)}
        loaded["has_sheet"] = loaded["sheet"].is_file()
        try:
            loaded["ranking"] = read_ranking(run_dir)
        except ValueError as exc:  # shown in the section instead of the images
            loaded["ranking"] = str(exc)
        return loaded

    def load_run_done(self, loaded: dict) -> None:
        self.loaded = loaded

    @property
    def files(self) -> list[Path]:
        """What c copies: the final embedding's files, or the suggested best step's (b)."""
        return self.best_files if self.copy_best else self.final_files

    def watch_loaded(self, loaded: dict) -> None:
        run_dir, self.view, name, sdxl = loaded["run_dir"], loaded["view"], loaded["name"], loaded["sdxl"]
        if loaded["error"]:
            self.show_message(loaded["error"])
        st, pt = loaded["st"], loaded["pt"]
        files = [st] if sdxl else [st, pt]
        if sdxl:
            embedding = (f"Embedding    {st}  (SDXL: clip_l + clip_g; A1111/Forge, ComfyUI, InvokeAI, SD.Next)\n"
                         "             no .pt: A1111's .pt format has no SDXL form\n")
            invoke = "InvokeAI: install the .safetensors."
        else:
            embedding = (f"Embedding    {st}\n             for diffusers, ComfyUI, A1111\n"
                         f"             {pt}\n             for A1111 classic, InvokeAI\n")
            invoke = "InvokeAI: install the .pt (it misreads the width of a one-tensor .safetensors)."
        best = loaded["best"]
        suggested = ""
        basis = BEST_BASES.get(self.view.best_basis or "", "the run's suggestion")
        if best:
            suggested = (f"Suggested    step {self.view.best_step}: {best[0].relative_to(run_dir)} "
                         f"({basis}); b copies it instead\n")
        elif self.view.best_step is not None and self.view.best_step == self.view.step:
            suggested = f"Suggested    the final embedding above (step {self.view.best_step}: {basis})\n"
        self.final_files, self.best_files, self.emb_name = files, best, name
        self.query_one("#fin-files", Static).update(
            f"Run folder   {run_dir}\n{embedding}{suggested}"
            "Checkpoints  embeddings/ · previews/ · loss.csv · config.toml"
        )
        how = (f"Type it in a prompt, e.g. “a portrait, {name}”" if loaded.get("kind", "subject") == "subject"
               else escape(usage_text(loaded["kind"], name)))  # a negative embedding goes in the negative prompt
        self.query_one("#fin-usage", Static).update(
            f"Trigger word: [b]{name}[/b]. {how} "
            f"A1111 and ComfyUI (embedding:{name}) pick it up from their embeddings folder. {invoke}"
        )
        self.query_one("#fin-snippet", Static).update(diffusers_snippet(loaded["model"], str(self.files[0]), name,
                                                                        sdxl=sdxl))
        self.query_one("#fin-sheet-label").display = self.query_one("#fin-sheet").display = loaded["has_sheet"]
        if loaded["has_sheet"]:
            self.query_one("#fin-sheet", ImagePreview).set_image(loaded["sheet"])
        self._show_ranking(loaded.get("ranking"))

    def _show_ranking(self, ranking) -> None:
        """The run's worst-fitting training images (image_ranking.json), each with its thumbnail and what to do."""
        box = self.query_one("#fin-fight", Vertical)
        self.query_one("#fin-fight-label").display = box.display = ranking is not None
        box.remove_children()
        if ranking is None:
            return
        if isinstance(ranking, str):
            box.mount(Static(ranking, markup=False))
            return
        if not ranking.flagged:
            box.mount(Static(f"None stands out: the embedding fits all {len(ranking.images)} training images about "
                             "equally well."))
            return
        for im in ranking.flagged[:3]:
            thumb = ImagePreview(classes="fight-thumb", placeholder="")
            box.mount(Horizontal(thumb, Static(f"{Path(im.image).name}\n{im.message}", classes="fight-text",
                                               markup=False), classes="fight-row"))
            self.call_after_refresh(thumb.set_image, im.image)  # once mounted: it loads in its own worker
        if len(ranking.flagged) > 3:
            box.mount(Static(f"{len(ranking.flagged) - 3} more: tiwiz inspect --run {self.view.run_dir}", markup=False))

    @work(thread=True, exclusive=True, group="targets", exit_on_error=False)
    def scan_targets(self) -> tuple:
        """Look for installs off the UI thread: it lists folders that may sit on a slow network disk."""
        return tuple(find_targets(self.app.finder_roots))

    def scan_targets_done(self, targets: tuple) -> None:
        self.targets = targets

    def watch_targets(self, targets: tuple) -> None:
        menu = self.query_one("#fin-targets", OptionList)
        menu.clear_options()
        for t in targets:
            menu.add_option(Option(f"{t.app:<8} {t.path}"))
        if not targets:
            menu.add_option(Option("No A1111, ComfyUI or InvokeAI install found under /workspace, ~ or here.",
                                   disabled=True))
        else:
            menu.highlighted = 0

    @on(OptionList.OptionSelected, "#fin-targets")
    def _picked(self) -> None:
        self.action_copy()

    def action_copy(self, overwrite: bool = False) -> None:
        menu = self.query_one("#fin-targets", OptionList)
        if not self.files:
            self.show_message("Still reading the run; try again in a moment.", "info")
            return
        if not self.targets or menu.highlighted is None:
            self.show_message("No embeddings folder to copy into.", "info")
            return
        target = self.targets[menu.highlighted]
        src = pick_file([f for f in self.files if f.is_file()] or self.files, target.app)
        existing = target.path / (f"{self.emb_name}{src.suffix}" if src in (self.best_files or []) else src.name)
        if existing.exists() and not overwrite:
            self.app.push_screen(ConfirmModal(f"{existing} exists. Replace it?"),
                                 lambda yes: yes and self.action_copy(overwrite=True))
            return
        self.copy_to(src, target, overwrite)

    @work(thread=True, exclusive=True, group="copy", exit_on_error=False)
    def copy_to(self, src: Path, target, overwrite: bool) -> str:
        name = f"{self.emb_name}{src.suffix}" if src in (getattr(self, "best_files", None) or []) else None
        written = copy_embedding(src, target.path, overwrite=overwrite, name=name)  # errors: messages (worker_failed)
        return f"Copied {written.name} to {written.parent}. Refresh the embeddings list in {target.app}."

    def copy_to_done(self, text: str) -> None:
        self.show_message(text, "ok")

    def action_best(self) -> None:
        """Switch what `c` copies between the final embedding and the suggested best step's checkpoint (copied under
        the final name, so the trigger word stays the same)."""
        if not getattr(self, "best_files", None):
            self.show_message("No suggested best step other than the final one.", "info")
            return
        self.copy_best = not self.copy_best

    def watch_copy_best(self, best: bool) -> None:
        which = f"step {self.view.best_step}" if best else "the final embedding"
        self.show_message(f"c now copies {which} as {self.emb_name}.*", "info")

    def action_previews_page(self) -> None:
        web_links.open_previews(self.app, Path(self.state.run_dir).expanduser().resolve())

    def action_monitor(self) -> None:
        self.app.goto("monitor")

    def action_new(self) -> None:
        from tui.state import WizardState

        self.app.state = WizardState()
        self.app.goto("model")

    def action_train_again(self) -> None:
        """t: back to Training settings with this run's settings, to train a new run with a change or two."""
        self.read_run_config(Path(self.state.run_dir).expanduser().resolve())

    @work(thread=True, exclusive=True, group="train-again", exit_on_error=False)
    def read_run_config(self, run_dir: Path) -> dict:
        from core.training.config import TrainConfig

        return TrainConfig.from_toml(run_dir / "config.toml", validate=False).to_dict()

    def read_run_config_done(self, config: dict) -> None:
        from tui.state import train_again_state

        self.app.state = train_again_state(config, self.state.model_family)
        self.app.goto("training")
        self.app.call_after_refresh(lambda: self.app.screen.show_message(
            "The finished run's settings: change what you want; Next starts a new run (the old one stays).", "info"))

    def action_back(self) -> None:
        self.app.goto("monitor")

    def action_next(self) -> None:
        pass
