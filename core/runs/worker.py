"""`python -m core.runs.worker RUN_DIR [--resume]`: runs one training in RUN_DIR, detached from any terminal.

Started by `core.runs.api` in a new session with stdin from /dev/null and stdout/stderr appended to RUN_DIR/worker.log.
It holds RUN_DIR/worker.lock for its whole life, appends every event to events.jsonl, keeps status.json current,
consumes commands/ between steps, and turns SIGTERM/SIGINT into a graceful stop that saves. SIGHUP is ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from core.atomic import open_own_text, open_own_file, remove_own_file
from core.runs import folder as runs
from core.runs import run_events as ev
from core.runs.run_events import Command, EndReason, RunPhase
from core.runs.status import RunStatus
from core.errors import TiwizError

STATUS_EVERY_S = 1.0


class StatusTracker:
    """status.json kept in step with the events: every event the worker writes is folded by the one reducer (`run`, a
    `RunState` seeded with the run's log so far, so a resumed life knows its checkpoints and best step), and the
    status is that state as a `RunStatus` plus who writes it. Written at once on a change of state and at checkpoints,
    at most every STATUS_EVERY_S for plain steps, by a background thread (an atomic write's fsync takes 10-30 ms,
    which once a second would cost a small model's training loop 1-3%); the end is written synchronously.

    While the worker lives the status says running (or stopping): the run is over for viewers only once `end()` wrote
    the final state, after the log's last word."""

    def __init__(self, run_dir: Path, resume: bool, foreground: bool = False) -> None:
        from core.runs.run_state import RunState

        self.run_dir = run_dir
        try:  # the spawner's "starting" status (or the previous life's, on resume)
            previous = runs.read_run_status(run_dir)
        except TiwizError:
            previous = None
        previous = previous[0] if previous else RunStatus()
        try:
            self.run = RunState.fold(runs.read_events(run_dir)[0])
        except OSError:
            self.run = RunState()
        self.run.name = self.run.name or previous.name or run_dir.name
        self.run.max_steps = self.run.max_steps or previous.max_steps
        self.run.worker_started(step=(self.run.last_checkpoint or 0) if resume else 0)
        self.meta = {"pid": os.getpid(), "host": socket.gethostname(), "started": round(time.time(), 3),
                     "resumed": resume, "foreground": True if foreground else None}  # foreground: the CLI trains
        self.ended = False
        self._last_write = 0.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from a signal handler
        self._write_file(self.status.to_json())
        self._thread = threading.Thread(target=self._writer, name="status-writer", daemon=True)
        self._thread.start()

    @property
    def status(self) -> RunStatus:
        status = RunStatus.from_state(self.run, **self.meta)
        if not self.ended and not status.state.active:  # the log's last word is not written yet
            status.state = RunPhase.RUNNING
        return status

    def _write_file(self, snapshot: dict) -> None:
        try:
            runs.write_status(self.run_dir, snapshot)
        except OSError as exc:  # a full disk must not kill training; the event log still says what happens
            _say(sys.stderr, f"tiwiz worker: cannot write status.json: {exc}")

    def _writer(self) -> None:
        while True:
            items = [self._queue.get()]
            while not self._queue.empty():
                items.append(self._queue.get())
            snapshots = [i for i in items if isinstance(i, dict)]
            if snapshots:
                self._write_file(snapshots[-1])  # only the newest matters
            for item in items:
                if isinstance(item, threading.Event):
                    item.set()
            if any(item is None for item in items):
                return

    def write(self) -> None:
        """Queue the current status for writing."""
        self._queue.put(self.status.to_json())
        self._last_write = time.monotonic()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is on disk."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def stopping(self, reason: str) -> None:
        """A stop was asked for (a signal, commands/stop): say so at once, as the `stopping` event would."""
        if self.run.phase == RunPhase.RUNNING:
            self.run.apply(ev.Stopping(step=self.run.step, reason=reason))
            self.write()

    def end(self, exit_event: ev.Exit) -> None:
        """The worker's last word (also when it could not be written to the log): the final state, on disk now."""
        self.run.apply(exit_event)  # again when the log has it: the fold of an `exit` is the same twice
        self.ended = True
        self.write()
        self.flush()

    def on_event(self, event: ev.RunEvent) -> None:
        self.run.apply(event)
        if isinstance(event, ev.Step):
            if time.monotonic() - self._last_write >= STATUS_EVERY_S:
                self.write()
            return
        if isinstance(event, _UNSEEN_IN_STATUS):
            return
        self.write()
        if isinstance(event, ev.Checkpoint):  # rare, next to a much slower save: keep status in step with the state
            self.flush()


_UNSEEN_IN_STATUS = (ev.Preview, ev.PreviewRendering, ev.Warning, ev.ImagesRanked)  # nothing of status.json changes


class WorkerSink:
    """Appends to events.jsonl and updates status.json. Takes typed run events (and, from shared helpers such as the
    dataset, `emit("warning", message=...)`, which is typed here)."""

    def __init__(self, run_dir: Path, tracker: StatusTracker, observer=None) -> None:
        from core.events import JsonlSink

        self.log = JsonlSink(run_dir / runs.EVENTS)
        self.tracker = tracker
        self.observer = observer  # called with each typed event after it is written (the foreground progress)
        self.lost_error = False  # an error event could not be written (a full disk): the worker writes it again

    def emit(self, event, **fields) -> dict:
        from core.events import make_event

        data = make_event(event, **fields)
        try:
            self.log.write_event(data)
        except OSError:
            self.lost_error = self.lost_error or data.get("type") == "error"
            raise
        typed = event if isinstance(event, ev.RunEvent) else ev.parse(data)
        if typed is not None:
            self.tracker.on_event(typed)
            if self.observer is not None:
                try:
                    self.observer(typed)
                except Exception:  # noqa: BLE001 - a display problem never stops the training
                    pass
        return data

    def close(self) -> None:
        self.log.close()


def describe_failure(exc: BaseException, tracker: StatusTracker) -> str:
    """A message the user can act on: write errors name the file, and the last good checkpoint is pointed at."""
    if isinstance(exc, TiwizError):
        message = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        message = "aborted without saving (a second Ctrl-C)"
    elif isinstance(exc, OSError) and exc.errno is not None:
        target = exc.filename2 or exc.filename or "a file"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
                    errno.EROFS: "the file system is read-only", errno.EFBIG: "the file is too large"}[exc.errno]
            message = f"cannot write {target}: {what}"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            message = f"permission denied: {target}"
        else:
            message = f"{exc.strerror or exc}: {target}"
    else:
        message = f"{exc.__class__.__name__}: {exc}"
    last = tracker.run.last_checkpoint
    if last and (tracker.run_dir / runs.STATE).is_file() and "tiwiz resume" not in message:  # never promise twice
        message += (f" (the last good checkpoint, step {last}, is intact: fix this and "
                    f"`tiwiz resume {tracker.run_dir}` continues from it)")
    return message


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.runs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/state/latest.pt")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not run_dir.is_dir():
        print(f"tiwiz worker: {run_dir}: no such folder", file=sys.stderr)
        return 2
    try:
        runs.check_no_links(run_dir)
        lock = runs.acquire_lock(run_dir)
    except TiwizError as exc:
        print(f"tiwiz worker: {exc}", file=sys.stderr, flush=True)
        return 3
    _say(sys.stderr, f"tiwiz worker: pid {os.getpid()} {'resuming' if args.resume else 'starting'} in {run_dir} "
                     f"at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    try:
        return _run_locked(run_dir, args.resume)
    finally:
        lock.release()


def train_in_process(run_dir: str | os.PathLike, resume: bool = False, observer=None) -> int:
    """`tiwiz train --foreground`: train in this process exactly as a worker does (lock, events.jsonl, status.json,
    commands/), handing each event to `observer` as well. The first SIGINT/SIGTERM saves and stops; a second one
    aborts at once without saving. Returns 0 (finished or stopped) or 1 (failed)."""
    run_dir = Path(run_dir).resolve()
    runs.check_no_links(run_dir)
    lock = runs.acquire_lock(run_dir)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run_locked(run_dir, resume, observer=observer, foreground=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()


def _run_locked(run_dir: Path, resume: bool, observer=None, foreground: bool = False) -> int:
    if foreground:  # the terminal shows the progress; diagnostics go where a worker's go
        try:
            log = open_own_text(run_dir / runs.LOG)
        except OSError:
            log = open(os.devnull, "w")
    else:
        log = sys.stderr
    try:
        return _run_logged(run_dir, resume, observer, foreground, log)
    finally:
        if log is not sys.stderr:
            log.close()


def _run_logged(run_dir: Path, resume: bool, observer, foreground: bool, log) -> int:
    tracker = StatusTracker(run_dir, resume, foreground=foreground)
    reserve = _reserve_space(run_dir)
    try:
        runs.repair_event_log(run_dir)
        sink = WorkerSink(run_dir, tracker, observer)
    except OSError as exc:
        reason = f"cannot write the event log: {describe_failure(exc, tracker)}"
        _say(log, f"tiwiz worker: failed: {reason}")
        tracker.end(ev.Exit(state=RunPhase.FAILED, step=tracker.run.step, reason=reason))
        tracker.close()
        return 1
    box = runs.CommandBox(run_dir)
    trainer = None
    stop_signal: list[str] = []

    def on_signal(signum, frame) -> None:
        if foreground and stop_signal:  # a second Ctrl-C in a terminal: give up at once
            raise KeyboardInterrupt
        stop_signal.append(signal.Signals(signum).name)
        tracker.stopping(f"{signal.Signals(signum).name} received")
        if trainer is not None:
            trainer.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def poll_commands() -> list[Command]:
        taken = box.take()
        while box.warnings:  # junk in commands/ is reported, never fatal
            _safe_emit(sink, ev.Warning(message=box.warnings.pop(0)))
        if Command.STOP in taken:
            tracker.stopping("stop requested")
        return taken

    try:
        from core.training.config import TrainConfig

        config = TrainConfig.from_toml(run_dir / runs.CONFIG)
        from core.training.trainer import Trainer

        trainer = Trainer(config, run_dir, sink, poll_commands=poll_commands)
        if stop_signal:
            trainer.request_stop()
        outcome = trainer.run(resume=resume)
    except BaseException as exc:  # noqa: BLE001 - every failure must end as state "failed" with its reason
        reason = describe_failure(exc, tracker)
        # The run's last words before worker.log's traceback: on a full disk, writing the log can fail too.
        _release_reserve(reserve)  # on a full disk, the space for the last words below
        if trainer is None or sink.lost_error:  # the trainer emits its own error event, unless it could not
            _safe_emit(sink, ev.Error(message=reason))
        # The log's last word goes first: once status.json says the run is over, viewers stop reading.
        last_word = ev.Exit(state=RunPhase.FAILED, step=tracker.run.step, reason=reason)
        _safe_emit(sink, last_word)
        _safe_close(sink)
        tracker.end(last_word)
        tracker.close()
        _say(log, "".join(traceback.format_exception(exc)) + f"tiwiz worker: failed: {reason}")
        return 1
    _release_reserve(reserve)
    state = RunPhase.FINISHED if outcome.finished else RunPhase.STOPPED
    reason = "" if outcome.finished else _stop_reason(outcome.reason, stop_signal)
    if outcome.reason == EndReason.AUTO_STOP:
        reason = tracker.run.reason or "auto-stop: the validation loss went flat"
    last_word = ev.Exit(state=state, step=outcome.step, reason=reason)
    _safe_emit(sink, last_word)
    _safe_close(sink)
    tracker.end(last_word)
    tracker.close()
    _say(log, f"tiwiz worker: {state} at step {tracker.run.step}")
    return 0


RESERVE = runs.RESERVE
RESERVE_BYTES = 256 << 10


def _reserve_space(run_dir: Path) -> Path | None:
    """Hold some disk space for the run's last words: when the disk fills up, deleting this file lets the worker
    still write the error, the `exit` event and status.json "failed" (otherwise viewers can only say "killed").
    With less free, as much as there is (down to one block). Never through a link: a link or a hard link by that name
    is left alone (no reserve)."""
    path = run_dir / RESERVE
    try:
        fd = open_own_file(path, os.O_WRONLY | os.O_CREAT)
    except OSError:
        return None
    with os.fdopen(fd, "wb") as fh:
        size = RESERVE_BYTES
        while size >= 4096:
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(b"\0" * size)  # real blocks (a sparse file would free nothing)
                fh.flush()
                os.fsync(fh.fileno())
                return path
            except OSError:
                size //= 4
        with contextlib.suppress(OSError):
            fh.truncate(0)
    remove_own_file(path)
    return None


def _release_reserve(path: Path | None) -> None:
    if path is not None:
        remove_own_file(path)


def _stop_reason(trainer_reason: EndReason, signals: list[str]) -> str:
    if trainer_reason == EndReason.STOP:
        return "stop requested"
    if signals:
        return f"{signals[0]} received"
    return str(trainer_reason)


def _say(log, text: str) -> None:
    """A line for worker.log, which may be unwritable (a full disk): the run's end never depends on it."""
    with contextlib.suppress(Exception):
        print(text, file=log, flush=True)


def _safe_close(sink: WorkerSink) -> None:
    with contextlib.suppress(OSError):  # a full disk: the buffered tail cannot be flushed
        sink.close()


def _safe_emit(sink: WorkerSink, event: ev.RunEvent) -> None:
    try:
        sink.emit(event)
    except Exception as exc:  # noqa: BLE001 - the log may be what failed (disk full)
        _say(sys.stderr, f"tiwiz worker: cannot write the {event.TYPE} event: {exc}")


def _exit(code: int) -> None:
    """End the process now: a thread a library left running (or an unwritable stderr at shutdown) must never keep a
    worker that is done looking alive to `tiwiz runs` and the queue."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        _code = main()
    except BaseException as _exc:  # noqa: BLE001 - whatever happened, the process ends
        _say(sys.stderr, "".join(traceback.format_exception(_exc)))
        _code = 1
    _exit(_code)
