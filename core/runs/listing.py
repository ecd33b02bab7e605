"""Listing runs: what state a run folder is in (`inspect_run`: status.json plus liveness, the event log when the
status is missing or torn), every run under a root (`list_runs`), and a run named by its folder or a prefix
(`resolve_run`). A damaged folder is a row of its own, never a traceback. Torch-free.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.errors import TiwizError
from core.runs.eventlog import last_events
from core.runs.layout import CONFIG, EVENTS, LOG, STATE, STATUS, default_root, is_run_dir, read_status
from core.runs.liveness import lock_is_held, pid_is_worker
from core.runs.status import RunStatus
from core.runs.vocab import RunPhase

STARTING_GRACE_S = 60.0  # a "starting" status without a live worker for longer than this means the start failed


@dataclass(kw_only=True)
class RunInfo(RunStatus):
    """A run's status record (`core.runs.status.RunStatus`: state, step, last checkpoint, ...) plus what only a
    reader can tell: its folder, whether its worker is alive (an active state without a live worker reads as killed),
    and the problems met reading it."""

    path: Path
    alive: bool = False
    problems: list[str] = field(default_factory=list)

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
    info = RunInfo(path=run_dir, name=run_dir.name)
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
            info.problems.append(f"not a run folder (no {STATUS}, {EVENTS} or {CONFIG})")
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


def _copy(info: RunInfo, record: RunStatus) -> None:
    for f in fields(RunStatus):
        setattr(info, f.name, getattr(record, f.name))


def _apply_events(info: RunInfo, events: list[dict]) -> None:
    """Fill `info` from the log alone (the fallback when status.json is missing or corrupt), through the reducer."""
    from core.runs.run_state import RunState

    state = RunState.fold(events)
    if not state.counts:
        return
    _copy(info, RunStatus.from_state(state, updated=state.updated))
    info.name = info.name or info.path.name
    if state.skipped:
        info.problems.append(f"{info.path / EVENTS}: skipped {state.skipped} event(s) with fields of the wrong type")
    if info.state.active:  # the log says running; without a status the lock tells whether a worker lives
        info.alive = lock_is_held(info.path)
        if not info.alive:
            info.state = RunPhase.KILLED


def _apply_status(info: RunInfo, status: dict) -> None:
    record, problems = RunStatus.parse(status)
    info.problems += [f"{info.path / STATUS}: {p}" for p in problems]
    _copy(info, record)
    info.name = record.name or info.path.name
    state = record.state
    if not state.active:
        info.alive = False
        return
    same_host = record.host in (None, socket.gethostname())  # pids mean nothing on another machine
    alive = pid_is_worker(info.pid, info.path) if info.pid and same_host else lock_is_held(info.path)
    if not alive and record.foreground and same_host:
        alive = lock_is_held(info.path)  # `train --foreground`: no worker process; the CLI holds the lock
    if alive:
        info.alive = True
    elif state == RunPhase.STARTING and info.pid is None and time.time() - (info.updated or 0) < STARTING_GRACE_S:
        info.alive = True  # being spawned this very moment
    elif state == RunPhase.STARTING:
        info.state = RunPhase.FAILED
        info.reason = info.reason or f"the worker did not start; see {info.path / LOG}"
    else:
        info.state = RunPhase.KILLED
        # The log may be a moment ahead of the status: take the step and checkpoint it last recorded.
        from_log = RunInfo(path=info.path, name=info.name)
        _apply_events(from_log, last_events(info.path))
        info.step = max(info.step, from_log.step)
        info.last_checkpoint = max(info.last_checkpoint or 0, from_log.last_checkpoint or 0) or None


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
    raise TiwizError(f"{run}: not a run folder (no {STATUS}, {EVENTS} or {CONFIG}); "
                     f"`tiwiz runs` lists the runs under {root}")
