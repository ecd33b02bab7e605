"""The `commands/` drop box: a viewer drops an empty file named for a `Command` (`send_command`), the worker takes
and removes it between steps (`CommandBox`). Never through a link: the folder is opened with O_NOFOLLOW, and a
`commands` that is not a folder is moved aside, never deleted or followed. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path

from core.atomic import atomic_write_text, link_problem
from core.errors import TiwizError
from core.runs.layout import COMMANDS
from core.runs.vocab import Command

COMMAND_NAMES = tuple(c.value for c in Command)


def send_command(run_dir: str | os.PathLike, command: str | Command) -> Path:
    parsed = Command.parse(command)
    if parsed is None:
        raise TiwizError(f"unknown command {command!r}; one of {', '.join(COMMAND_NAMES)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TiwizError(f"{run_dir}: no such run folder")
    box = run_dir / COMMANDS
    if link_problem(box):
        raise TiwizError(f"{link_problem(box)}, not a folder: tiwiz never writes through a link in a run folder; the "
                         "worker moves it aside at its next step, then try again")
    if box.exists() and not box.is_dir():
        raise TiwizError(f"{box} is not a folder; the worker replaces it at its next step, then try again")
    try:
        return atomic_write_text(box / parsed.value, f"{time.time():.3f}\n")
    except OSError as exc:
        raise TiwizError(f"cannot write {box / parsed.value}: {exc.strerror or exc}") from None


def _open_folder(path: Path) -> int:
    """An fd of the folder `path` itself, never of what a link there points at (OSError ELOOP/ENOTDIR otherwise)."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _move_aside(path: Path) -> Path:
    """Rename `path` (a file or a link, never followed) to a free `NAME.moved-aside-N` beside it."""
    n = 1
    while os.path.lexists(aside := path.with_name(f"{path.name}.moved-aside-{n}")):
        n += 1
    os.rename(path, aside)
    return aside


def clear_commands(run_dir: str | os.PathLike) -> None:
    """Before a worker starts: drop the commands an earlier life never read (a `stop` sent to a killed worker must not
    stop the new one). Only command files in the real commands/ folder are removed; anything else is left for the
    worker, which reports it. Call `check_no_links` first: a link here raises OSError instead of being followed."""
    box = Path(run_dir) / COMMANDS
    with contextlib.suppress(FileExistsError):
        box.mkdir()
    fd = _open_folder(box)
    try:
        for entry in os.scandir(fd):
            if Command.parse(entry.name) is not None and not entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)


class CommandBox:
    """The worker's side of commands/: `take()` returns and consumes pending commands (cheap: one scandir).

    It never raises and never deletes through a link: files inside the real folder are consumed (unknown names
    reported), a `commands` that is not a folder (a plain file, a link) is moved aside, never deleted or followed, and
    an empty folder takes its place; each problem is reported once in `warnings` (the worker emits them)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / COMMANDS
        self._seen_mtime: int | None = None
        self._reported: set[str] = set()
        self.warnings: list[str] = []
        fd = self._open()
        if fd is not None:
            os.close(fd)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.warnings.append(message)

    def _open(self) -> int | None:
        """An fd of the real commands/ folder (made, or put in place of what is not a folder), or None."""
        for _ in range(3):
            try:
                return _open_folder(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    self._warn("open", f"cannot read {self.path}: {exc.strerror or exc}; commands are ignored")
                    return None
                self._replace_non_folder()
            try:
                self.path.mkdir()
            except FileExistsError:
                pass
            except OSError as exc:
                self._warn("mkdir", f"cannot create {self.path}: {exc.strerror or exc}; commands are ignored")
                return None
        return None

    def _replace_non_folder(self) -> None:
        link = link_problem(self.path)
        try:
            aside = _move_aside(self.path)
        except OSError as exc:
            self._warn("file", f"{self.path} is not a folder and cannot be moved aside ({exc.strerror or exc}); "
                               "commands are ignored")
            return
        what = f"{link}, not a folder" if link else f"{self.path} was not a folder"
        self._warn(f"aside:{aside.name}", f"{what}: moved it aside to {aside.name} (nothing was deleted) and made an "
                                          "empty commands folder")

    def take(self) -> list[Command]:
        fd = self._open()
        if fd is None:
            self._seen_mtime = None
            return []
        try:
            st = os.fstat(fd)
            # Unchanged since the last scan: skip it. Folder mtimes are coarse (a few ms), so trust only old ones.
            if st.st_mtime_ns == self._seen_mtime and time.time() - st.st_mtime > 2.0:
                return []
            self._seen_mtime = st.st_mtime_ns
            try:
                entries = sorted(os.scandir(fd), key=_mtime)
            except OSError:
                return []
            return self._consume(fd, entries)
        finally:
            os.close(fd)

    def _consume(self, fd: int, entries) -> list[Command]:
        taken: list[Command] = []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # an atomic write in progress
            command = Command.parse(entry.name)
            where = self.path / entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    self._warn(f"dir:{entry.name}", f"ignored the folder {where} (commands are files)")
                    continue
                os.unlink(entry.name, dir_fd=fd)  # an entry that is a link: the link goes, never its target
            except FileNotFoundError:
                continue  # someone else consumed it
            except OSError as exc:
                self._warn(f"rm:{entry.name}", f"cannot remove {where}: {exc.strerror or exc}")
                continue
            if command is None:
                self._warn(f"name:{entry.name}", f"ignored {entry.name!r} in {self.path}: not a command (one of "
                                                 f"{', '.join(COMMAND_NAMES)})")
            elif command not in taken:
                taken.append(command)
        return taken


def _mtime(entry) -> float:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0
