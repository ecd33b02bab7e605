"""A file browser for the model path: folders plus .safetensors/.ckpt files; a diffusers folder is picked whole."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Label, Static

from tui.widgets.trees import UpDirectoryTree

MODEL_SUFFIXES = (".safetensors", ".ckpt")


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet").is_dir()


def browse_start(current: str) -> Path:
    """Where the browser opens: beside the current model path, else /workspace on a pod, else the current folder."""
    if current:  # a model (file or diffusers folder) opens at its parent, so its neighbours show; a plain folder as is
        path = Path(current).expanduser()
        here = path if path.is_dir() and not is_diffusers_folder(path) else path.parent
        if here.is_dir():
            return here
    workspace = Path("/workspace")
    return workspace if workspace.is_dir() else Path.cwd()


class ModelTree(UpDirectoryTree):
    """Folders and checkpoint files, no hidden entries."""

    def filter_paths(self, paths):
        return [p for p in paths if not p.name.startswith(".")
                and (p.is_dir() or p.suffix.lower() in MODEL_SUFFIXES)]


class ModelBrowser(ModalScreen[str | None]):
    """Enter on a .safetensors/.ckpt file or on a diffusers folder returns its path; Escape returns None."""

    DEFAULT_CSS = """
    .browser { width: 90; height: 80%; }
    .browser DirectoryTree { height: 1fr; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, start: Path) -> None:
        super().__init__()
        self.start = start

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog browser"):
            yield Label(f"Pick a model under {self.start}", classes="dialog-title")
            yield ModelTree(self.start, id="browse-tree")
            yield Static("[b]Enter[/b] pick a .safetensors/.ckpt file or a diffusers folder (it has model_index.json)"
                         " · other folders open · [b]Backspace[/b] parent folder · [b]Esc[/b] cancel",
                         classes="dialog-keys")

    def on_mount(self) -> None:
        self.query_one(ModelTree).focus()

    @on(DirectoryTree.FileSelected)
    def _file(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        self.dismiss(str(event.path.resolve()))

    @on(DirectoryTree.DirectorySelected)
    def _folder(self, event: DirectoryTree.DirectorySelected) -> None:
        event.stop()
        if is_diffusers_folder(event.path):
            self.dismiss(str(event.path.resolve()))

    def action_cancel(self) -> None:
        self.dismiss(None)
