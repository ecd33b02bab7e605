"""The run folder: layout, `status.json`, the worker lock, liveness, listing, reading/following `events.jsonl`, and
the `commands/` drop box. Torch-free (the TUI imports it).

```
RUN_DIR/
  config.toml      the TrainConfig (what `tiwiz resume` restarts from)
  events.jsonl     append-only event log, one JSON object a line (the source of truth for every viewer)
  status.json      atomic snapshot: pid, state, step, max_steps, last checkpoint, last loss, updated
  commands/        a viewer drops a file named stop / save / preview (run_events.Command); the worker consumes it
                   between steps, and warns about (and removes) anything else it finds there
  worker.lock      flock held by the worker for its whole life
  worker.log       the worker's stdout/stderr (tracebacks)
  embeddings/ previews/ state/latest.pt loss.csv NAME.pt NAME.safetensors   (written by the trainer)
                   loss.csv: step,epoch,loss,val_loss,lr,elapsed_s,holdout_loss,editability, one row a step
                   (core.runs.lossfile)
  image_ranking.json  the images that fight the concept, worst first (core.training.image_ranking), written at the
                   end of a run and by `tiwiz doctor --run RUN`
```
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import LinkedFileError, atomic_write_json, atomic_write_text, link_problem, open_own_file
from core.errors import TiwizError
from core.runs.run_events import Command, RunPhase

CONFIG = "config.toml"
EVENTS = "events.jsonl"
STATUS = "status.json"
COMMANDS = "commands"
LOCK = "worker.lock"
LOG = "worker.log"
STATE = "state/latest.pt"
LOSS = "loss.csv"
RESERVE = ".tiwiz-reserve"  # disk space the worker holds for its last words (core.runs.worker)
# Every name of the layout: none may be a link, because the worker and `start`/`resume` write, truncate or delete
# inside them (a run folder unpacked from an archive or on a shared volume must never make tiwiz touch the files a
# link points at).
LAYOUT = (CONFIG, EVENTS, STATUS, COMMANDS, LOCK, LOG, LOSS, RESERVE, "state", "embeddings", "previews")

# status.json `state` is a RunPhase word. "starting" is written by whoever spawns the worker, before it runs.
ACTIVE_STATES = tuple(p for p in RunPhase if p.active)
FINAL_STATES = (RunPhase.FINISHED, RunPhase.FAILED, RunPhase.STOPPED)
COMMAND_NAMES = tuple(c.value for c in Command)
STARTING_GRACE_S = 60.0  # a "starting" status without a live worker for longer than this means the start failed


def default_root() -> Path:
    return Path(os.environ.get("TIWIZ_RUNS_DIR") or "runs")


# ---- status.json --------------------------------------------------------------------------------------------------
def read_status(run_dir: str | os.PathLike) -> dict | None:
    """The status dict, None when there is none yet. A corrupt file raises TiwizError naming it."""
    path = Path(run_dir) / STATUS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise TiwizError(f"{path}: corrupt (not UTF-8 text)") from None
    except OSError as exc:
        raise TiwizError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise TiwizError(f"{path}: corrupt (JSON nested too deeply)") from None
    except ValueError as exc:
        raise TiwizError(f"{path}: corrupt ({exc})") from None
    if not isinstance(data, dict):
        raise TiwizError(f"{path}: corrupt (not a JSON object)")
    return data


def write_status(run_dir: str | os.PathLike, status: dict) -> dict:
    status = dict(status)
    status["updated"] = round(time.time(), 3)
    atomic_write_json(Path(run_dir) / STATUS, status, in_place_when_full=True)  # "failed" even on a full disk
    return status


def check_no_links(run_dir: str | os.PathLike) -> None:
    """TiwizError naming every entry of the run folder's layout that is a link (symbolic, or a hard link of a file
    we append to), before anything is written or deleted there. The run folder itself may be a link."""
    problems = [problem for name in LAYOUT if (problem := link_problem(Path(run_dir) / name))]
    if problems:
        raise TiwizError(f"{'; '.join(problems)}: tiwiz never writes or deletes through a link in a run folder; "
                         "remove the link (what it points at is left alone) and try again")


# ---- liveness -----------------------------------------------------------------------------------------------------
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


# ---- events.jsonl -------------------------------------------------------------------------------------------------
def parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Parse complete JSON lines. Returns (events, bad_lines); lines that are not a JSON object (or are nested too
    deeply to parse) are skipped. The dicts are typed by `run_events.parse` (the reducer does it)."""
    if not data:
        return [], 0
    try:  # fast path: one json.loads for the whole chunk
        events = json.loads(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]")
        if all(isinstance(e, dict) for e in events):
            return events, 0
    except (ValueError, RecursionError):
        pass
    events, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if isinstance(event, dict):
            events.append(event)
        else:
            bad += 1
    return events, bad


class EventReader:
    """Incremental reader of events.jsonl: each `read()` returns the complete lines appended since the last call.
    An unterminated last line (a write in progress, or a crash mid-write) is left for the next call."""

    CHUNK = 8 << 20

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.offset = 0
        self.bad_lines = 0
        self._ino = None

    def read(self, max_bytes: int | None = None) -> list[dict]:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        with fh:
            st = os.fstat(fh.fileno())
            if self._ino is not None and (st.st_ino != self._ino or st.st_size < self.offset):
                self.offset = 0  # the file was replaced: start over
            self._ino = st.st_ino
            if st.st_size <= self.offset:
                return []
            fh.seek(self.offset)
            data = fh.read(min(st.st_size - self.offset, max_bytes or st.st_size))
        end = data.rfind(b"\n")
        if end < 0:
            return []
        data = data[: end + 1]
        self.offset += len(data)
        events, bad = parse_lines(data)
        self.bad_lines += bad
        return events

    def pending_partial(self) -> bool:
        """True when the file ends with an unterminated line (a truncated last line once the writer is gone)."""
        try:
            return self.path.stat().st_size > self.offset
        except OSError:
            return False


def read_events(run_dir: str | os.PathLike) -> tuple[list[dict], dict]:
    """All complete events of a run and a report {"bad_lines": n, "truncated_tail": bool}."""
    reader = EventReader(Path(run_dir) / EVENTS)
    events = reader.read()
    return events, {"bad_lines": reader.bad_lines, "truncated_tail": reader.pending_partial()}


def last_events(run_dir: str | os.PathLike, max_bytes: int = 256 << 10) -> list[dict]:
    """The complete events in the last `max_bytes` of the log (cheap, for listing)."""
    path = Path(run_dir) / EVENTS
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            fh.seek(start)
            data = fh.read()
    except OSError:
        return []
    if start:
        data = data[data.find(b"\n") + 1:]  # drop the first, probably partial, line
    end = data.rfind(b"\n")
    return parse_lines(data[: end + 1])[0] if end >= 0 else []


def repair_event_log(run_dir: str | os.PathLike) -> bool:
    """Terminate an unterminated last line (left by a kill mid-write) so the next append starts a fresh line.
    The partial line stays in the file and readers skip it. Returns True when a repair was made."""
    path = Path(run_dir) / EVENTS
    try:
        fd = open_own_file(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    with os.fdopen(fd, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == 0:
            return False
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return False
        fh.write(b"\n")
        return True


# ---- commands/ ----------------------------------------------------------------------------------------------------
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


# ---- listing ------------------------------------------------------------------------------------------------------
@dataclass
class RunInfo:
    path: Path
    name: str
    state: RunPhase  # a str enum: compares equal to its word ("running", "stopped", ...)
    step: int = 0
    max_steps: int = 0
    last_loss: float | None = None
    last_checkpoint: int | None = None
    updated: float | None = None
    pid: int | None = None
    alive: bool = False
    reason: str = ""
    problems: list[str] = field(default_factory=list)
    best_step: int | None = None  # the suggested best step (lowest held-out loss, else the auto-stop rule's, ...)
    best_basis: str | None = None  # what it rests on (run_events.BEST_BASES)

    @property
    def phase(self) -> RunPhase:
        return self.state

    @property
    def loss(self) -> float | None:
        return self.last_loss

    @property
    def description(self) -> str:
        """Human state, e.g. 'killed at step 120 (last checkpoint 100)'."""
        return describe_phase(self.state, self.step, self.last_checkpoint, self.reason)

    @property
    def resumable(self) -> bool:
        return not self.alive and (self.path / STATE).is_file()


def describe_phase(phase: RunPhase, step: int, last_checkpoint: int | None = None, reason: str = "") -> str:
    """The one wording of a run's state for `tiwiz runs`, `stop`, `attach` and the TUI."""
    ckpt = f"last checkpoint {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
    if phase == RunPhase.KILLED:
        return f"killed at step {step} ({ckpt})"
    if phase == RunPhase.FAILED:
        return f"failed at step {step}" + (f": {reason}" if reason else "")
    if phase == RunPhase.STOPPED:
        return f"stopped at step {step}" + (f" ({reason})" if reason else "")
    if phase == RunPhase.DAMAGED:
        return "damaged" + (f": {reason}" if reason else "")
    if phase == RunPhase.FINISHED and reason:  # e.g. auto-stop: the validation loss went flat
        return f"finished at step {step} ({reason})"
    return phase.value


def inspect_run(run_dir: str | os.PathLike) -> RunInfo:
    """What state a run folder is in, never raising for a damaged folder: a status.json that cannot be read makes the
    run DAMAGED with the reason (the rest is rebuilt from the event log), other oddities are listed in `problems`."""
    run_dir = Path(run_dir)
    info = RunInfo(path=run_dir, name=run_dir.name, state=RunPhase.UNKNOWN)
    damaged = ""
    try:
        status = read_status(run_dir)
    except TiwizError as exc:
        status = None
        damaged = str(exc)
    except Exception as exc:  # noqa: BLE001 - one damaged folder must never break a listing
        status = None
        damaged = f"{run_dir / STATUS}: cannot read ({exc.__class__.__name__})"
    if not status:  # rebuild what we can from the end of the event log
        tail = last_events(run_dir)
        if not tail and not damaged and not (run_dir / CONFIG).is_file():
            info.problems.append("not a run folder (no status.json, events.jsonl or config.toml)")
        _apply_events(info, tail)
    else:
        _apply_status(info, status)
    if damaged and not info.alive:
        info.state, info.reason = RunPhase.DAMAGED, damaged
    elif damaged:
        info.problems.append(damaged)
    if (run_dir / EVENTS).is_file():
        try:
            with open(run_dir / EVENTS, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                if size:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n" and not info.alive:
                        info.problems.append(f"{run_dir / EVENTS}: the last line is truncated (skipped)")
        except OSError as exc:
            info.problems.append(f"{run_dir / EVENTS}: cannot read ({exc.strerror})")
    return info


def _num(value, kind=float):
    if isinstance(value, bool):
        return None
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def _apply_events(info: RunInfo, events: list[dict]) -> None:
    """Fill `info` from the log alone (the fallback when status.json is missing or corrupt), through the reducer."""
    from core.runs.run_state import RunState

    state = RunState.fold(events)
    if not state.counts:
        return
    info.step, info.max_steps = state.step, state.max_steps or info.max_steps
    info.last_loss = state.last_loss if state.last_loss is not None else info.last_loss
    info.last_checkpoint = state.last_checkpoint or info.last_checkpoint
    info.updated = state.updated or info.updated
    info.name = state.name or info.name
    info.state, info.reason = state.phase, state.reason
    if state.best_step is not None:
        info.best_step, info.best_basis = state.best_step, state.best_basis
    if state.skipped:
        info.problems.append(f"{info.path / EVENTS}: skipped {state.skipped} event(s) with fields of the wrong type")
    if info.state.active:  # the log says running; without a status the lock tells whether a worker lives
        info.alive = lock_is_held(info.path)
        if not info.alive:
            info.state = RunPhase.KILLED


def _apply_status(info: RunInfo, status: dict) -> None:
    info.name = str(status.get("name") or info.name)
    info.pid = _num(status.get("pid"), int)
    info.step = _num(status.get("step"), int) or info.step
    info.max_steps = _num(status.get("max_steps"), int) or info.max_steps
    info.last_loss = _num(status.get("last_loss")) if status.get("last_loss") is not None else info.last_loss
    info.last_checkpoint = _num(status.get("last_checkpoint"), int) or info.last_checkpoint
    info.updated = _num(status.get("updated")) or info.updated
    if status.get("best_step") is not None:
        info.best_step = _num(status.get("best_step"), int)
        basis = status.get("best_basis")
        info.best_basis = basis if isinstance(basis, str) else None
    state = RunPhase.parse(status.get("state"))
    info.reason = str(status.get("reason") or status.get("error") or info.reason or "")
    if state.active:
        same_host = status.get("host") in (None, socket.gethostname())  # pids mean nothing on another machine
        alive = pid_is_worker(info.pid, info.path) if info.pid and same_host else lock_is_held(info.path)
        if not alive and status.get("foreground") and same_host:
            alive = lock_is_held(info.path)  # `train --foreground`: no worker process; the CLI holds the lock
        if alive:
            info.state, info.alive = state, True
        elif state == RunPhase.STARTING and info.pid is None and time.time() - (info.updated or 0) < STARTING_GRACE_S:
            info.state, info.alive = RunPhase.STARTING, True  # being spawned this very moment
        elif state == RunPhase.STARTING:
            info.state = RunPhase.FAILED
            info.reason = info.reason or f"the worker did not start; see {info.path / LOG}"
        else:
            info.state = RunPhase.KILLED
            # The log may be a moment ahead of the status: take the step and checkpoint it last recorded.
            from_log = RunInfo(path=info.path, name=info.name, state=RunPhase.UNKNOWN)
            _apply_events(from_log, last_events(info.path))
            info.step = max(info.step, from_log.step)
            info.last_checkpoint = max(info.last_checkpoint or 0, from_log.last_checkpoint or 0) or None
    else:
        info.state, info.alive = state, False


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (STATUS, EVENTS, CONFIG))


def list_runs(root: str | os.PathLike | None = None) -> list[RunInfo]:
    """Runs directly under `root` (default ./runs), newest first. A missing root is an empty list."""
    root = Path(root) if root is not None else default_root()
    try:
        children = [p for p in root.iterdir() if is_run_dir(p)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    runs = [_inspect_safely(p) for p in children]
    runs.sort(key=lambda r: (r.updated or 0.0, r.name), reverse=True)
    return runs


def _inspect_safely(path: Path) -> RunInfo:
    try:
        return inspect_run(path)
    except Exception as exc:  # noqa: BLE001 - a damaged folder gets its own row, never a traceback for the listing
        return RunInfo(path=path, name=path.name, state=RunPhase.DAMAGED,
                       reason=f"cannot read it ({exc.__class__.__name__}: {exc})")


def resolve_run(run: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A run given as a path, or as a folder name (or unique prefix) under the runs root."""
    path = Path(run)
    if is_run_dir(path):
        return path
    root = Path(root) if root is not None else default_root()
    if is_run_dir(root / run):
        return root / run
    try:
        matches = sorted(p for p in root.iterdir() if p.name.startswith(str(run)) and is_run_dir(p))
    except OSError:
        matches = []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = ", ".join(p.name for p in matches[:5])
        raise TiwizError(f"{run!r} matches several runs under {root}: {names}; give the full folder name")
    raise TiwizError(f"{run}: not a run folder (no status.json, events.jsonl or config.toml); "
                     f"`tiwiz runs` lists the runs under {root}")
