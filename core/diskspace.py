"""Telling a full disk apart from other write failures, and saying so in words.

torch.save reports ENOSPC as `RuntimeError: basic_ios::clear: iostream error` or `[enforce fail at
inline_container.cc:...]`, safetensors as its own error type: the errno is often lost. So a write failure counts as
"disk full" when an ENOSPC/EDQUOT is anywhere in its chain, its text says so, or the folder has almost no space left.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

NEARLY_FULL_BYTES = 1 << 20  # a failed write with less than this free is taken for a full disk
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXTS = ("no space left", "disk quota", "storagefull", "not enough space")


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding `folder` (or its nearest existing parent); None when unknown."""
    path = Path(folder)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def is_disk_full(exc: BaseException, folder: str | os.PathLike) -> bool:
    """True when `exc` (a failed write into `folder`) comes from a full disk or quota."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        if any(text in str(current).lower().replace(" ", "") or text in str(current).lower()
               for text in _FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    free = free_bytes(folder)
    return free is not None and free < NEARLY_FULL_BYTES


def human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def disk_full_message(folder: str | os.PathLike, what: str) -> str:
    """'the disk is full: cannot write WHAT in FOLDER (12 KB free)'."""
    return f"the disk is full: cannot {what} in {folder} ({human_bytes(free_bytes(folder))} free)"
