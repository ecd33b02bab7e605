"""Directory trees that can leave the folder they started in: Backspace shows the parent folder."""

from __future__ import annotations

from pathlib import Path

from textual.binding import Binding
from textual.widgets import DirectoryTree


class UpDirectoryTree(DirectoryTree):
    BINDINGS = [Binding("backspace", "parent", "Parent folder")]

    def action_parent(self) -> None:
        here = Path(self.path).expanduser().resolve()
        if here.parent != here:
            self.path = here.parent
