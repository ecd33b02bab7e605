"""Folders: the source images and the destination of the preprocessed dataset, typed or picked from a tree, each
validated (exists, readable, images found). "Already preprocessed" skips straight to captions.

While typing, the folders are scanned in an exclusive worker once typing pauses (`SCAN_DEBOUNCE_S`), not on the UI
thread; Next checks them afresh."""

from __future__ import annotations

import os
import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Checkbox, DirectoryTree, Input, Label, Static

from core.prep.captions import IMAGE_KINDS, list_images
from tui.screens.base import WizardScreen, error_text
from tui.widgets.inputs import PathInput, Tick
from tui.widgets.trees import UpDirectoryTree


SCAN_DEBOUNCE_S = 0.2


class FolderTree(UpDirectoryTree):
    """Folders only, no hidden ones."""

    def filter_paths(self, paths):
        return [p for p in paths if not p.name.startswith(".") and p.is_dir()]


def folder_report(path_text: str, *, must_exist: bool = True) -> tuple[bool, str]:
    """(ok, message) for a folder field: exists, readable, how many images."""
    if not path_text:
        return False, "empty"
    path = Path(path_text).expanduser()
    if not path.exists():
        return (not must_exist), ("will be created" if not must_exist else "does not exist")
    if not path.is_dir():
        return False, "is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return False, "is not readable"
    try:
        n = len(list_images(path))
    except Exception as exc:
        return False, error_text(exc)
    return True, f"{n} image{'s' if n != 1 else ''}"


class FoldersScreen(WizardScreen):
    STAGE = "folders"
    DEFAULT_CSS = """
    #folder-fields { width: 1fr; }
    #tree { width: 40%; max-width: 36; height: 1fr; border-left: solid $primary; }
    """

    def compose_body(self) -> ComposeResult:
        with Horizontal(classes="body"):
            with Vertical(id="folder-fields"):
                yield Label("Source images", classes="field-label")
                yield PathInput(self.state.source, placeholder="/workspace/photos", id="source")
                yield Static("", id="source-info", classes="hint")
                yield Tick("Already preprocessed: skip to captions", self.state.skip_preprocess, id="skip")
                yield Label("Destination (the training dataset)", classes="field-label", id="dest-label")
                yield PathInput(self.state.dataset if not self.state.skip_preprocess else "",
                            placeholder="/workspace/dataset", id="dest")
                yield Static("", id="dest-info", classes="hint")
                yield Static("Tab completes a path, or moves between fields and the tree. Enter on a folder in the "
                             "tree fills the field you were last in; Backspace shows the parent folder.",
                             classes="hint")
            yield FolderTree(".", id="tree")

    def on_mount(self) -> None:
        self.query_one(FolderTree).root.set_label(". (the current folder)")
        self._target = "source"
        self.query_one("#source", Input).focus()
        self._refresh_info()

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if event.input.id == "source":
            self.state.source = event.value.strip()
        elif event.input.id == "dest":
            if not self.state.skip_preprocess:
                self.state.dataset = event.value.strip()
        self._refresh_info()

    def on_descendant_focus(self, event) -> None:
        if isinstance(event.widget, Input) and event.widget.id in ("source", "dest"):
            self._target = event.widget.id

    @on(Checkbox.Changed, "#skip")
    def _skip(self, event: Checkbox.Changed) -> None:
        self.state.skip_preprocess = event.value
        if event.value:
            self.state.dataset = self.state.source
        else:
            self.state.dataset = self.query_one("#dest", Input).value.strip()
        self._refresh_info()

    @on(DirectoryTree.DirectorySelected, "#tree")
    def _tree_pick(self, event: DirectoryTree.DirectorySelected) -> None:
        target = self._target if not (self._target == "dest" and self.state.skip_preprocess) else "source"
        self.query_one(f"#{target}", Input).value = str(event.path.resolve())

    def _refresh_info(self) -> None:
        skip = self.state.skip_preprocess
        for wid in ("#dest", "#dest-label", "#dest-info"):
            self.query_one(wid).display = not skip
        if skip:
            self.state.dataset = self.state.source
        dest = "" if skip else self.query_one("#dest", Input).value.strip()
        if not skip and not dest:
            self.query_one("#dest-info", Static).update("[dim]where the cropped, captioned images go[/]")
        self.scan(self.state.source, dest)

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def scan(self, source: str, dest: str) -> tuple | None:
        """Count the images of both folders once typing pauses; a newer scan cancels this one."""
        from textual.worker import get_current_worker

        time.sleep(SCAN_DEBOUNCE_S)
        worker = get_current_worker()
        if worker.is_cancelled:
            return None
        results = {(source, True): folder_report(source)}
        if dest:
            results[(dest, False)] = folder_report(dest, must_exist=False)
            results[("exists", False)] = (Path(dest).expanduser().exists(), "")
        return source, dest, results  # a cancelled worker's result never arrives

    def scan_done(self, scanned: tuple | None) -> None:
        if scanned is None:
            return
        source, dest, results = scanned
        exists = results.pop(("exists", False), (False, ""))[0]
        ok, msg = results[(source, True)]
        self.query_one("#source-info", Static).update(f"[{'green' if ok else 'red'}]{msg}[/]")
        if not dest:
            return
        ok, msg = results[(dest, False)]
        if ok and exists and msg != "0 images":
            msg += " already there: preprocessing will ask before overwriting"
        self.query_one("#dest-info", Static).update(f"[{'green' if ok else 'red'}]{msg}[/]")

    def check_files(self) -> str | None:
        ok, msg = folder_report(self.state.source)  # scanned afresh: the folder may have changed since
        if not ok:
            return f"Source folder: {msg}." if self.state.source else "Type or pick the folder of your images."
        if msg == "0 images":
            return f"The source folder has no images ({IMAGE_KINDS})."
        if self.state.skip_preprocess:
            self.state.dataset = self.state.source
            return None
        if not self.state.dataset:
            return "Type or pick the destination folder for the preprocessed images."
        src, dest = Path(self.state.source).expanduser().resolve(), Path(self.state.dataset).expanduser().resolve()
        if src == dest:
            return "The destination must differ from the source: your images are never modified."
        ok, msg = folder_report(self.state.dataset, must_exist=False)
        if not ok:
            return f"Destination folder: {msg}."
        return None
