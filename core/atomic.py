"""Atomic file writes: a temp file in the same folder, fsync, then rename. A kill at any moment leaves the old file or the new one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """Temp files for `name` are `.{name}.XXXX.tmp` (so a stale one can be recognised and removed)."""
    return f".{name}."


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode an ordinary new file gets under the current umask (0644 under 022)."""
    return 0o666 & ~current_umask()


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None], *, sync_dir: bool = True) -> Path:
    """Call `writer(tmp_path)` to produce the file, then fsync and rename it over `path`. The file gets the mode a
    plain `open(path, "w")` would give it (mkstemp's temp files are 0600, which would make every output private).
    `sync_dir=False` leaves the folder's fsync to the caller: a batch of writes into one folder syncs it once at the
    end (`sync_folder`) instead of once per file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, new_file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        _fsync_dir(path.parent)
    return path


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder, making the renames of earlier `sync_dir=False` writes into it durable."""
    _fsync_dir(Path(folder))


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync_dir: bool = True) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, write, sync_dir=sync_dir)


def atomic_write_text(path: str | os.PathLike, text: str, *, sync_dir: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), sync_dir=sync_dir)


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def remove_stale_temps(folder: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> list[Path]:
    """Delete temp files left by atomic writes that were killed mid-write (`.NAME.XXXX.tmp`) in `folder` and the
    named subfolders. Only for folders one process writes (a run folder at its worker's start): a live writer's temp
    file would be removed too. Returns what was removed."""
    removed = []
    for sub in ("", *subfolders):
        where = Path(folder) / sub
        try:
            entries = list(where.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and entry.is_file():
                try:
                    entry.unlink()
                    removed.append(entry)
                except OSError:
                    pass
    return removed
