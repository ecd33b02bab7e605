"""The source side of `tiwiz preprocess`: which files of SRC to try (odd entries named with a reason, never a crash),
their names as text that survives JSON, and deterministic, collision-free output names."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

SIDECAR_EXTENSIONS = frozenset({".txt", ".caption", ".json", ".xmp", ".tags", ".toml", ".yaml", ".yml"})


def list_sources(src: Path) -> list[Path]:
    """Files in `src` to try, sorted by name. Hidden files, folders and caption/sidecar files are left out quietly."""
    return scan_sources(src)[0]


def scan_sources(src: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """(files to try, [(name, reason)] for odd entries): symlink loops, broken symlinks, FIFOs, sockets and devices
    get a reason instead of crashing the scan or vanishing. Hidden files, folders and sidecars stay quiet."""
    out, odd = [], []
    for entry in os.scandir(src):
        if entry.name.startswith(".") or Path(entry.name).suffix.lower() in SIDECAR_EXTENSIONS:
            continue
        reason = _odd_entry_reason(entry)
        if reason is None:
            out.append(Path(entry.path))
        elif reason:
            odd.append((entry.name, reason))
    return sorted(out, key=lambda p: p.name), sorted(odd)


def _odd_entry_reason(entry) -> str | None:
    """None for a regular file, "" for a folder (skipped quietly), else why the entry cannot be used."""
    import errno
    import stat

    try:
        if entry.is_file():
            return None
        if entry.is_dir():
            return ""
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (the link points back to itself); skipped"
        return f"cannot read it ({exc.strerror or exc}); skipped"
    if entry.is_symlink():
        try:
            target = os.readlink(entry.path)
        except OSError:
            target = "?"
        return f"a broken symlink: its target {display_name(target)} does not exist; skipped"
    try:
        mode = entry.stat(follow_symlinks=True).st_mode
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc}); skipped"
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"{kind}, not an image file; skipped"


def display_name(name: str) -> str:
    """A file name as text that survives JSON and UTF-8 output: bytes that are not UTF-8 become `\\xe9`."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


class Namer:
    """Deterministic, collision-free output stems: the source stem, or stem-ext when two sources share a stem
    (`dup.jpg`, `dup.png` -> `dup-jpg`, `dup-png`), then -2, -3... until every name the source needs is free.
    Comparisons ignore case so the set also survives a case-insensitive file system."""

    def __init__(self, sources: Iterable[Path]):
        stems: dict[str, int] = {}
        for p in sources:
            stems[p.stem.casefold()] = stems.get(p.stem.casefold(), 0) + 1
        self.shared = {s for s, n in stems.items() if n > 1}
        self.claimed: set[str] = set()

    def claim(self, source: Path, suffixes: list[str]) -> str:
        base = source.stem or source.name
        base = os.fsencode(base).decode("utf-8", "replace").replace("\ufffd", "_")  # outputs get UTF-8 names
        if base.casefold() in self.shared:
            ext = source.suffix.lstrip(".").lower()
            base = f"{base}-{ext}" if ext else base
        candidate, n = base, 1
        while any((candidate + s).casefold() in self.claimed for s in suffixes):
            n += 1
            candidate = f"{base}-{n}"
        self.claimed.update((candidate + s).casefold() for s in suffixes)
        return candidate
