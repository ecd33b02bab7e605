"""Atomic file writes: a temp file in the same folder, fsync, then rename. A kill at any moment leaves the old file or the new one."""

from __future__ import annotations

import errno
import json
import os
import stat
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


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None], *, sync_dir: bool = True,
                      mode: int | None = None) -> Path:
    """Call `writer(tmp_path)` to produce the file, then fsync and rename it over `path`. The file gets the mode a
    plain `open(path, "w")` would give it (mkstemp's temp files are 0600, which would make every output private).
    `sync_dir=False` leaves the folder's fsync to the caller: a batch of writes into one folder syncs it once at the
    end (`sync_folder`) instead of once per file. `mode` narrows the mode further (a copy of a private file stays
    private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, new_file_mode() if mode is None else mode & new_file_mode())
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


def atomic_create_text(path: str | os.PathLike, text: str) -> Path:
    """Like `atomic_write_text`, but never replaces a file: FileExistsError when `path` exists (also when another
    process creates it at the same moment). The complete file appears at once (a hard link of a finished temp file)."""
    path = Path(path)
    done = atomic_write_text(path.with_name(f"{temp_prefix(path.name)}{os.getpid()}.new{TEMP_SUFFIX}"), text)
    try:
        os.link(done, path)
    except FileExistsError:
        raise
    except OSError as exc:  # a file system without hard links: exclusive create, then the content
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        with open(path, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        os.unlink(done)
    _fsync_dir(path.parent)
    return path


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync a folder, making the renames of earlier `sync_dir=False` writes into it durable."""
    _fsync_dir(Path(folder))


def give_umask_mode(folder: str | os.PathLike, since: float) -> None:
    """Give the files a library wrote under `folder` since `since` (a time.time()) the mode a new file gets under the
    umask: some writers (safetensors' save_file) create their files 0600. Links and older files are left alone."""
    mode = new_file_mode()
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_mtime >= since - 1 and stat.S_IMODE(st.st_mode) != mode:
                    os.chmod(path, mode)
            except OSError:
                continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, sync_dir: bool = True) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write_with(path, write, sync_dir=sync_dir)


def atomic_write_text(path: str | os.PathLike, text: str, *, sync_dir: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), sync_dir=sync_dir)


def atomic_write_json(path: str | os.PathLike, obj, *, in_place_when_full: bool = False) -> Path:
    """`in_place_when_full`: for a small state file that must say how things ended even on a full disk (status.json,
    a queue job's state): when the atomic write fails for lack of space, the existing file is overwritten in place,
    in blocks it already owns (not atomic, so only as the last resort)."""
    text = json.dumps(obj, indent=1, ensure_ascii=False) + "\n"
    try:
        return atomic_write_text(path, text)
    except OSError as exc:
        if not in_place_when_full or exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not _overwrite(path, text):
            raise
        return Path(path)


def _overwrite(path: str | os.PathLike, text: str) -> bool:
    """Write `text` over the existing file `path` within its allocated blocks; False when it cannot."""
    data = text.encode("utf-8")
    try:
        fd = open_own_file(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if len(data) > max(st.st_size, st.st_blocks * 512):
            return False
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | os.PathLike, subfolders: tuple[str, ...] = ()) -> list[Path]:
    """Delete temp files left by atomic writes that were killed mid-write (`.NAME.XXXX.tmp`) in `folder` and the
    named subfolders. Only for folders one process writes (a run folder at its worker's start): a live writer's temp
    file would be removed too. A subfolder that is a link is not entered, and only plain files with no other name are
    removed (never what a link points at). Returns what was removed."""
    removed = []
    for sub in ("", *subfolders):
        where = Path(folder) / sub
        if sub and is_link(where):
            continue
        try:
            entries = list(where.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX) and remove_own_file(entry):
                removed.append(entry)
    return removed


# ---- never through a link: what a run or queue folder holds may come from an archive or a shared volume ---------------
class LinkedFileError(OSError):
    """A file we write in place (append, truncate, overwrite) is a link: its content belongs to something else."""


def is_link(path: str | os.PathLike) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def link_problem(path: str | os.PathLike) -> str | None:
    """Why writing `path` in place would change something outside it (a symbolic link, or a file with another name,
    i.e. a hard link), else None (also when it does not exist)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        return f"{path} is a symbolic link (to {target})"
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        return f"{path} is a hard link (the file has {st.st_nlink} names)"
    return None


def open_own_file(path: str | os.PathLike, flags: int, mode: int = 0o666) -> int:
    """`os.open` for a file we write in place, never through a link: LinkedFileError when `path` is a symbolic link,
    a hard link or not a plain file (a FIFO would block). The caller closes the fd."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LinkedFileError(errno.ELOOP, link_problem(path) or f"{path} is a symbolic link", str(path)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        why = link_problem(path) or f"{path} is not a plain file"
        raise LinkedFileError(errno.EPERM, why, str(path))
    os.set_blocking(fd, True)
    return fd


def open_own_text(path: str | os.PathLike, append: bool = True):
    """A text file object appending to (or creating) `path`, never through a link (see `open_own_file`)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0)
    return os.fdopen(open_own_file(path, flags), "a" if append else "w", encoding="utf-8")


def remove_own_file(path: str | os.PathLike) -> bool:
    """Delete `path` only when it is a plain file with no other name (never a link, a folder or a shared inode).
    True when it was removed."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            return False
        os.unlink(path)
    except OSError:
        return False
    return True
