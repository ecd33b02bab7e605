"""Base model: checkpoints found in A1111, ComfyUI and the HF cache, or a typed path; family and size from the header."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Input, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui.screens.base import WizardScreen, error_text
from tui.widgets.inputs import PathInput

FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", "unknown": "unknown family"}


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
    BINDINGS = [Binding("f5", "rescan", "Rescan"), Binding("f3", "browse", "Browse")]

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
    def scan(self) -> None:
        from core.models.find import find_checkpoints

        roots = self.app.finder_roots
        found = find_checkpoints(roots, defaults=roots is None)
        self.app.call_from_thread(self._show_found, found)

    def _show_found(self, found) -> None:
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
        self.query_one("#found-status", Static).update(
            f"{len(found)} found. Enter picks one." if found else
            "No checkpoints found in the usual places. Type the path of yours above."
        )

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
    def inspect(self, path: str) -> None:
        from core.models.find import inspect_checkpoint

        if not path:
            self.app.call_from_thread(self._show_info, "", None)
            return
        try:
            info = inspect_checkpoint(Path(path))
        except Exception as exc:
            self.app.call_from_thread(self._show_info, path, error_text(exc))
            return
        self.app.call_from_thread(self._show_info, path, info)

    def _show_info(self, path: str, info) -> None:
        if path != self.state.model:
            return  # a newer keystroke won
        widget = self.query_one("#model-info", Static)
        if info is None:
            widget.update("")
        elif isinstance(info, str):
            widget.update(f"[red]{info}[/red]")
        else:
            colour = "green" if info.usable else "red"
            widget.update(f"[{colour}]{describe(info)}[/{colour}]")

    def check(self) -> str | None:
        if not self.state.model:
            return "Pick a model, or type its path."
        from core.models.find import inspect_checkpoint

        try:
            info = inspect_checkpoint(Path(self.state.model))
        except Exception as exc:
            return error_text(exc)
        if not info.usable:
            return f"This model cannot be used: {info.problem or FAMILY_NAMES.get(info.family, info.family)}."
        self.state.model_family = info.family
        if info.family == "sdxl":  # SDXL's native size; the training screen says why
            for key in ("width", "height"):
                self.state.train.setdefault(key, 1024)
        return None
