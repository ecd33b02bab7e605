"""`python -m core.runs.worker RUN_DIR [--resume]`: runs one training in RUN_DIR, detached from any terminal.

Started by `core.runs.api` in a new session with stdin from /dev/null and stdout/stderr appended to RUN_DIR/worker.log.
It holds RUN_DIR/worker.lock for its whole life, appends every event to events.jsonl, keeps status.json current,
consumes commands/ between steps, and turns SIGTERM/SIGINT into a graceful stop that saves. SIGHUP is ignored.
"""

from __future__ import annotations

import argparse
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

from core.runs import folder as runs
from core.errors import TiwizError

STATUS_EVERY_S = 1.0


class StatusTracker:
    """status.json kept in step with the events: queued at once on state changes and checkpoints, at most every
    STATUS_EVERY_S for plain steps. A background thread does the writing, because an atomic write's fsync takes
    10-30 ms, which once a second would cost a small model's training loop 1-3%; final states are written
    synchronously."""

    def __init__(self, run_dir: Path, resume: bool) -> None:
        self.run_dir = run_dir
        try:  # the spawner's "starting" status (or the previous life's, on resume)
            previous = runs.read_status(run_dir) or {}
        except TiwizError:
            previous = {}
        self.status = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "state": "running",
            "name": previous.get("name") or run_dir.name,
            "step": int(previous.get("last_checkpoint") or 0) if resume else 0,
            "max_steps": previous.get("max_steps") or 0,
            "last_checkpoint": previous.get("last_checkpoint") if resume else None,
            "last_loss": previous.get("last_loss") if resume else None,
            "started": round(time.time(), 3),
            "resumed": resume,
            "reason": "",
        }
        self._last_write = 0.0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # put() is safe from a signal handler
        self._write_file(dict(self.status))
        self._thread = threading.Thread(target=self._writer, name="status-writer", daemon=True)
        self._thread.start()

    def _write_file(self, snapshot: dict) -> None:
        try:
            runs.write_status(self.run_dir, snapshot)
        except OSError as exc:  # a full disk must not kill training; the event log still says what happens
            print(f"tiwiz worker: cannot write status.json: {exc}", file=sys.stderr, flush=True)

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
        self._queue.put(dict(self.status))
        self._last_write = time.monotonic()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until everything queued so far is on disk."""
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def set(self, sync: bool = False, **fields) -> None:
        self.status.update(fields)
        self.write()
        if sync:
            self.flush()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "step":
            self.status.update(step=event.get("step", self.status["step"]), last_loss=event.get("loss"),
                               max_steps=event.get("max_steps") or self.status["max_steps"])
            if time.monotonic() - self._last_write >= STATUS_EVERY_S:
                self.write()
            return
        if kind == "started":
            self.status.update(step=event.get("step", 0), max_steps=event.get("max_steps", 0),
                               name=event.get("name") or self.status["name"])
        elif kind == "checkpoint":
            self.status.update(step=event.get("step", self.status["step"]), last_checkpoint=event.get("step"))
        elif kind in ("finished", "stopped"):
            self.status.update(step=event.get("step", self.status["step"]))
        elif kind == "error":
            self.status["reason"] = event.get("message", "")
        else:
            return
        self.write()
        if kind == "checkpoint":  # rare and next to a much slower save: keep status in step with state/latest.pt
            self.flush()


class WorkerSink:
    """Appends to events.jsonl and updates status.json."""

    def __init__(self, run_dir: Path, tracker: StatusTracker) -> None:
        from core.events import JsonlSink

        self.log = JsonlSink(run_dir / runs.EVENTS)
        self.tracker = tracker

    def emit(self, type: str, **fields) -> dict:
        event = self.log.emit(type, **fields)
        self.tracker.on_event(event)
        return event

    def close(self) -> None:
        self.log.close()


def describe_failure(exc: BaseException, tracker: StatusTracker) -> str:
    """A message the user can act on: write errors name the file, and the last good checkpoint is pointed at."""
    if isinstance(exc, TiwizError):
        message = str(exc)
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
    last = tracker.status.get("last_checkpoint")
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
        lock = runs.acquire_lock(run_dir)
    except TiwizError as exc:
        print(f"tiwiz worker: {exc}", file=sys.stderr, flush=True)
        return 3
    print(f"tiwiz worker: pid {os.getpid()} {'resuming' if args.resume else 'starting'} in {run_dir} "
          f"at {time.strftime('%Y-%m-%d %H:%M:%S')}", file=sys.stderr, flush=True)
    try:
        return _run_locked(run_dir, args.resume)
    finally:
        lock.release()


def _run_locked(run_dir: Path, resume: bool) -> int:
    tracker = StatusTracker(run_dir, resume)
    try:
        runs.repair_event_log(run_dir)
        sink = WorkerSink(run_dir, tracker)
    except OSError as exc:
        reason = f"cannot write the event log: {describe_failure(exc, tracker)}"
        print(f"tiwiz worker: failed: {reason}", file=sys.stderr, flush=True)
        tracker.set(state="failed", reason=reason, sync=True)
        tracker.close()
        return 1
    box = runs.CommandBox(run_dir)
    trainer = None
    stop_signal: list[str] = []

    def on_signal(signum, frame) -> None:
        stop_signal.append(signal.Signals(signum).name)
        if tracker.status["state"] == "running":
            tracker.set(state="stopping", reason=f"{signal.Signals(signum).name} received")
        if trainer is not None:
            trainer.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def poll_commands() -> list[str]:
        taken = box.take()
        if "stop" in taken and tracker.status["state"] == "running":
            tracker.set(state="stopping", reason="stop requested")
        return taken

    try:
        from core.training.config import TrainConfig

        config = TrainConfig.from_toml(run_dir / runs.CONFIG)
        from core.training.trainer import Trainer

        trainer = Trainer(config, run_dir, sink, poll_commands=poll_commands)
        if stop_signal:
            trainer.request_stop()
        summary = trainer.run(resume=resume)
    except BaseException as exc:  # noqa: BLE001 - every failure must end as state "failed" with its reason
        reason = describe_failure(exc, tracker)
        traceback.print_exc()  # worker.log is for debugging: the user sees `reason`
        print(f"tiwiz worker: failed: {reason}", file=sys.stderr, flush=True)
        if trainer is None:  # the trainer emits its own error event; failures before it need one here
            _safe_emit(sink, "error", message=reason)
        # The log's last word goes first: once status.json says the run is over, viewers stop reading.
        _safe_emit(sink, "exit", state="failed", step=tracker.status["step"], reason=reason)
        sink.close()
        tracker.set(state="failed", reason=reason, sync=True)
        tracker.close()
        return 1
    state = "finished" if summary.get("state") == "finished" else "interrupted"
    reason = "" if state == "finished" else _stop_reason(summary.get("state"), stop_signal)
    step = summary.get("step", tracker.status["step"])
    _safe_emit(sink, "exit", state=state, step=step, reason=reason)
    sink.close()
    tracker.set(state=state, reason=reason, step=step, last_loss=summary.get("last_loss", tracker.status["last_loss"]),
                sync=True)
    tracker.close()
    print(f"tiwiz worker: {state} at step {tracker.status['step']}", file=sys.stderr, flush=True)
    return 0


def _stop_reason(trainer_reason: str | None, signals: list[str]) -> str:
    if trainer_reason == "stop":
        return "stop requested"
    if signals:
        return f"{signals[0]} received"
    return str(trainer_reason or "stopped")


def _safe_emit(sink: WorkerSink, type: str, **fields) -> None:
    try:
        sink.emit(type, **fields)
    except Exception as exc:  # noqa: BLE001 - the log may be what failed (disk full)
        print(f"tiwiz worker: cannot write the {type} event: {exc}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
