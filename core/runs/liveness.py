"""Whether a run's worker is alive: its flock on RUN_DIR/worker.lock (held for its whole life, dropped by the kernel
on kill -9) and its pid checked against /proc/PID/cmdline (a reused pid never makes a killed run look alive).
Torch-free.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from core.atomic import LinkedFileError, open_own_file
from core.errors import TiwizError
from core.runs.layout import LOCK


def pid_is_worker(pid, run_dir: str | os.PathLike | None = None) -> bool:
    """True when `pid` is a live `core.runs.worker` process (of `run_dir` when given): not a zombie, not a reused pid."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    proc = Path("/proc")
    if proc.is_dir():
        try:
            cmdline = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return False
        if run_dir is not None and os.fsencode(Path(run_dir).name) not in cmdline:
            return False
        return b"core.runs.worker" in cmdline  # a zombie has an empty cmdline
    try:  # no /proc (macOS): existence only
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_is_held(run_dir: str | os.PathLike) -> bool:
    """True when some process holds the worker lock of this folder."""
    return file_lock_is_held(Path(run_dir) / LOCK)


def file_lock_is_held(path: str | os.PathLike) -> bool:
    """True when some process (on any machine sharing the folder) holds an flock on `path`."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)  # a link or a FIFO is no lock of ours
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class WorkerLock:
    """An exclusive flock on RUN_DIR/worker.lock, held until release() or process exit (the kernel drops it on
    kill -9, so a dead worker never leaves a stale lock)."""

    def __init__(self, run_dir: str | os.PathLike, fd: int) -> None:
        self.run_dir = Path(run_dir)
        self.fd = fd

    def release(self) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def acquire_lock(run_dir: str | os.PathLike, wait_s: float = 1.0) -> WorkerLock:
    """Take the worker lock or raise TiwizError naming the worker that holds it. Retries for `wait_s` because a
    viewer's liveness probe holds a shared lock for a few microseconds."""
    import fcntl

    run_dir = Path(run_dir)
    path = run_dir / LOCK
    try:
        fd = open_own_file(path, os.O_RDWR | os.O_CREAT, 0o644)
    except LinkedFileError as exc:
        raise TiwizError(f"{exc.strerror}: tiwiz never writes through a link in a run folder; remove the link (what "
                         "it points at is left alone) and try again") from None
    except OSError as exc:
        raise TiwizError(f"{path}: cannot open ({exc.strerror or exc})") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise TiwizError(f"{path}: cannot lock ({exc.strerror})") from None
            if time.monotonic() >= deadline:
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                except OSError:
                    holder = ""
                os.close(fd)
                who = f" (pid {holder})" if holder else ""
                raise TiwizError(f"another worker{who} is already running in {run_dir}; attach to it with "
                                 f"`tiwiz attach {run_dir}` or stop it with `tiwiz stop {run_dir}`") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return WorkerLock(run_dir, fd)
