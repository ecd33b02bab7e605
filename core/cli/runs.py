"""`tiwiz attach`, `tiwiz runs`, `tiwiz stop`, `tiwiz resume`: watch and control detached training runs.

The viewer only reads the run folder and drops command files into it; killing it (Ctrl-C, SIGHUP on an SSH drop,
kill -9) never touches the training worker.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import sys
import time
from pathlib import Path

from core.runs import api as runapi

from core.runs import folder as runs
from core.errors import TiwizError

ASK_TIMEOUT_S = 30.0


def register(subparsers) -> None:
    train = subparsers.choices.get("train")  # core.cli.train registers first; its handler calls us
    if train is not None and "--detach" not in train._option_string_actions:
        train.add_argument("--detach", action="store_true",
                           help="start the training in the background and return; prints the run folder last")
        train.add_argument("--foreground", action="store_true",
                           help="train in this process instead of a detached worker (Ctrl-C stops it)")
    p = subparsers.add_parser("attach", help="watch a training run: replay its history, then follow it live",
                              description="Replay a run's events, then follow it live until it ends. Ctrl-C asks "
                                          "whether to detach (the default) or stop the training.")
    p.add_argument("run", help="run folder, or its name under the runs root")
    _root_arg(p)
    p.add_argument("--json", action="store_true", help="print every event as one JSON line instead of progress")
    p.add_argument("--no-follow", action="store_true", help="print the history and current state, then exit")
    p.set_defaults(func=cmd_attach)

    p = subparsers.add_parser("runs", help="list training runs with state, step, loss, age and last checkpoint")
    _root_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    p.set_defaults(func=cmd_runs)

    p = subparsers.add_parser("stop", help="stop a training run gracefully (it saves first)")
    p.add_argument("run", help="run folder, or its name under the runs root")
    _root_arg(p)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for it to stop (default 300)")
    p.add_argument("--no-wait", action="store_true", help="ask it to stop and return at once")
    p.set_defaults(func=cmd_stop)

    p = subparsers.add_parser("resume", help="continue a stopped, killed or finished run exactly where it saved",
                              description="Continue a run from its last checkpoint (state/latest.pt): vectors, "
                                          "optimizer, RNG, LR schedule position and step are restored.")
    p.add_argument("run", help="run folder, or its name under the runs root")
    _root_arg(p)
    p.add_argument("--steps", type=int, default=None, help="raise the run's max steps to N (to train further)")
    p.add_argument("--detach", action="store_true", help="start it and return; prints the run folder last")
    p.set_defaults(func=cmd_resume)


def _root_arg(p) -> None:
    p.add_argument("--root", default=None, help="folder holding the runs (default ./runs or $TIWIZ_RUNS_DIR)")


# ---- tiwiz runs ---------------------------------------------------------------------------------------------------
def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0, time.time() - ts)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{int(s // size)}{unit} ago"
    return f"{int(s)}s ago"


def cmd_runs(args) -> int:
    root = Path(args.root) if args.root else runs.default_root()
    found = runs.list_runs(root)
    if args.json:
        for info in found:
            print(json.dumps({"path": str(info.path), "name": info.name, "state": info.state,
                              "description": info.description, "step": info.step, "max_steps": info.max_steps,
                              "last_loss": info.last_loss, "last_checkpoint": info.last_checkpoint,
                              "updated": info.updated, "pid": info.pid, "alive": info.alive,
                              "problems": info.problems}))
        return 0
    if not found:
        print(f"no runs under {root}")
        return 0
    rows = [("NAME", "STATE", "STEP", "LOSS", "AGE", "CHECKPOINT")]
    for info in found:
        rows.append((info.path.name, info.description, f"{info.step}/{info.max_steps or '?'}",
                     f"{info.last_loss:.4f}" if info.last_loss is not None else "-", _age(info.updated),
                     str(info.last_checkpoint) if info.last_checkpoint else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    for info in found:
        for problem in info.problems:
            print(f"warning: {info.path.name}: {problem}", file=sys.stderr)
    return 0


# ---- tiwiz train (detached) ---------------------------------------------------------------------------------------
def wait_until_running(run_dir: Path, timeout: float = 15.0) -> runs.RunInfo:
    """Wait until the worker holds the run (it took the lock and wrote its pid); raise if it died starting."""
    deadline = time.monotonic() + timeout
    while True:
        info = runs.inspect_run(run_dir)
        if info.state != "starting":
            break
        if time.monotonic() > deadline:
            return info
        time.sleep(0.1)
    if not info.alive and info.state not in ("finished", "interrupted"):
        log = ""
        try:
            log = (run_dir / runs.LOG).read_text(errors="replace").strip().splitlines()[-1]
        except (OSError, IndexError):
            pass
        raise TiwizError(f"the training worker did not start ({info.description}). {log}".strip()
                         + f" See {run_dir / runs.LOG}")
    return info


def start_detached_training(config, detach: bool = False, root=None) -> int:
    """`tiwiz train`: start the worker; with detach print the run folder as the last line, else attach."""
    run_dir = runapi.start_run(config, root=root)
    info = wait_until_running(run_dir)
    if detach:
        print(f"training in the background (pid {info.pid}). Watch: tiwiz attach {run_dir}   "
              f"Stop: tiwiz stop {run_dir}")
        print(run_dir)
        return 0
    code = attach(run_dir)
    print(run_dir)
    return code


# ---- tiwiz stop ---------------------------------------------------------------------------------------------------
def cmd_stop(args) -> int:
    run_dir = runs.resolve_run(args.run, args.root)
    info = runs.inspect_run(run_dir)
    if not info.alive:
        print(f"{run_dir} is not running ({info.description})", file=sys.stderr)
        return 1
    if args.no_wait:
        runs.send_command(run_dir, "stop")
        print(f"stop requested; the worker saves and stops after the current step ({run_dir})")
        return 0
    print(f"stopping {run_dir.name} (pid {info.pid}): it saves and stops after the current step ...", flush=True)
    info = runapi.stop_run(run_dir, timeout=args.timeout)
    if info.alive:
        print(f"still running after {args.timeout:.0f}s; it stops after its current step. Check with "
              f"`tiwiz runs`", file=sys.stderr)
        return 1
    print(f"{info.description}; last checkpoint: step {info.last_checkpoint or '-'}")
    if info.state in ("interrupted", "killed"):
        print(f"continue it with: tiwiz resume {run_dir}")
    return 0 if info.state in ("interrupted", "finished") else 1


# ---- tiwiz resume -------------------------------------------------------------------------------------------------
def cmd_resume(args) -> int:
    run_dir = runs.resolve_run(args.run, args.root)
    run_dir = runapi.resume_run(run_dir, steps=args.steps)
    if args.detach:
        print(f"resumed; watch it with: tiwiz attach {run_dir}")
        print(run_dir)
        return 0
    return attach(run_dir)


# ---- tiwiz attach -------------------------------------------------------------------------------------------------
def cmd_attach(args) -> int:
    run_dir = runs.resolve_run(args.run, args.root)
    return attach(run_dir, as_json=args.json, follow=not args.no_follow)


def _fmt_time(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def progress_line(step_event: dict, width: int = 20) -> str:
    """tqdm's format: ` 42%|████▏     | 420/1000 [03:10<04:22, 2.21it/s, loss=0.0734, avg=0.0801, lr=5.00e-03]`."""
    step = int(step_event.get("step") or 0)
    total = int(step_event.get("max_steps") or 0)
    frac = min(1.0, step / total) if total else 0.0
    eighths = int(frac * width * 8)
    bar = "█" * (eighths // 8) + (" ▏▎▍▌▋▊▉"[eighths % 8] if eighths % 8 else "")
    bar = bar.ljust(width)
    rate = step_event.get("it_s") or 0.0
    rate_s = f"{rate:.2f}it/s" if rate >= 1 else (f"{1 / rate:.2f}s/it" if rate > 0 else "?it/s")
    eta = (total - step) / rate if rate > 0 else None
    parts = [rate_s]
    for key, label, fmt in (("loss", "loss", "{:.4f}"), ("loss_avg", "avg", "{:.4f}"), ("lr", "lr", "{:.2e}")):
        value = step_event.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label}={fmt.format(value)}")
    return (f"{frac * 100:3.0f}%|{bar}| {step}/{total} "
            f"[{_fmt_time(step_event.get('elapsed'))}<{_fmt_time(eta)}, {', '.join(parts)}]")


def describe_event(event: dict, run_dir: Path) -> str | None:
    """One line for a non-step event (None for events shown only as progress)."""
    kind = event.get("type")
    step = event.get("step")

    def path(key):
        value = event.get(key)
        return str(run_dir / value) if value else "?"

    if kind == "started":
        verb = "resumed at step" if event.get("resumed") else "started at step"
        return (f"{verb} {step} of {event.get('max_steps')}: {event.get('name')} on {event.get('device')} "
                f"({event.get('dtype')}), {event.get('n_images')} images, model {event.get('model')}")
    if kind == "checkpoint":
        return f"checkpoint at step {step}: {path('safetensors')}"
    if kind == "preview":
        return f"preview at step {step}: {path('path')}"
    if kind == "validation":
        val = event.get("val_loss")
        return f"validation loss at step {step}: {val:.4f}" if isinstance(val, (int, float)) else None
    if kind == "warning":
        return f"warning: {event.get('message')}"
    if kind == "error":
        return f"error: {event.get('message')}"
    if kind == "stopped":
        return f"stopped at step {step} ({event.get('reason')}): {path('safetensors')}"
    if kind == "finished":
        return f"finished at step {step}: {path('safetensors')}"
    return None


class AttachView:
    """Renders events: on a terminal one live tqdm-style line (redrawn at most 4 times a second) with event lines
    above it; elsewhere plain lines, the progress at most every 5 s."""

    def __init__(self, run_dir: Path, out=None) -> None:
        self.run_dir = run_dir
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.last_step: dict | None = None
        self._drawn = 0.0
        self._bar_visible = False
        self._printed: dict | None = None
        self.min_interval = 0.25 if self.tty else 5.0

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str) -> None:
        if self._bar_visible:
            self._write("\r\x1b[K")
            self._bar_visible = False
        self._write(text + "\n")

    def draw(self, force: bool = False) -> None:
        if self.last_step is None:
            return
        now = time.monotonic()
        if not force and now - self._drawn < self.min_interval:
            return
        self._drawn = now
        if not self.tty and self.last_step is self._printed:
            return
        self._printed = self.last_step
        if self.tty:
            cols = shutil.get_terminal_size((120, 24)).columns
            text = progress_line(self.last_step)
            if len(text) >= cols:  # narrow terminal: shrink the bar before cutting the numbers
                text = progress_line(self.last_step, width=max(3, 20 - (len(text) - cols + 1)))
            self._write("\r" + text[: max(20, cols - 1)] + "\x1b[K")
            self._bar_visible = True
        else:
            self._write(progress_line(self.last_step) + "\n")

    def replay(self, events: list[dict]) -> None:
        """History: every event line except repeated checkpoints/previews/validations (the last of each is shown)."""
        if not events:
            return
        last_of = {}
        for i, event in enumerate(events):
            if event.get("type") in ("checkpoint", "preview", "validation"):
                last_of[event["type"]] = i
        n_steps = len(runs.loss_history(events))
        counts = {k: sum(1 for e in events if e.get("type") == k) for k in last_of}
        self.line(f"history: {n_steps} steps" + "".join(f", {n} {k}s" for k, n in counts.items() if n))
        for i, event in enumerate(events):
            kind = event.get("type")
            if kind == "step":
                self.last_step = event
            elif kind in last_of and last_of[kind] != i:
                continue
            elif (text := describe_event(event, self.run_dir)) is not None:
                self.line(text)
        self.draw(force=True)

    def live(self, event: dict) -> None:
        if event.get("type") == "step":
            self.last_step = event
            self.draw()
        elif (text := describe_event(event, self.run_dir)) is not None:
            self.line(text)
            if self.tty:
                self.draw(force=True)

    def end(self) -> None:
        self.draw(force=True)
        if self._bar_visible:
            self._write("\n")
            self._bar_visible = False


def _ask_detach_or_stop() -> str:
    """'detach' or 'stop'. No answer within ASK_TIMEOUT_S, an empty answer, EOF or another Ctrl-C all detach."""
    sys.stderr.write("\nDetach (training continues) or stop & save? [D/s] ")
    sys.stderr.flush()
    try:
        ready, _, _ = select.select([sys.stdin], [], [], ASK_TIMEOUT_S)
        answer = sys.stdin.readline() if ready else ""
    except (KeyboardInterrupt, OSError, ValueError):
        answer = ""
    if not answer.endswith("\n"):
        sys.stderr.write("\n")
    return "stop" if answer.strip().lower().startswith("s") else "detach"


def attach(run_dir: Path, as_json: bool = False, follow: bool = True, interval: float = 0.2) -> int:
    """Replay then follow a run until it ends. Returns 0 when it finished or was stopped, 1 when it failed or was
    killed, 0 on detach."""
    try:
        return _attach(Path(run_dir), as_json, follow, interval)
    except BrokenPipeError:  # the terminal went away: nothing to report to, and the worker does not care
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


def _replay(run_dir: Path, follower, view, emit, as_json: bool, follow: bool) -> None:
    history = follower.poll()
    while batch := follower.poll():  # a log that is still growing fast: catch up first
        history.extend(batch)
    if as_json:
        for event in history:
            emit(event)
        return
    print(f"run: {run_dir}", flush=True)
    view.replay(history)
    if follow and not any(e.get("type") == "started" for e in history) and runs.inspect_run(run_dir).alive:
        print("waiting for the worker to load the model ...", flush=True)


def _attach(run_dir: Path, as_json: bool, follow: bool, interval: float) -> int:
    follower = runapi.follow(run_dir)
    view = AttachView(run_dir)
    emit = (lambda e: print(json.dumps(e, ensure_ascii=False), flush=True)) if as_json else view.live
    replayed = stopping = False
    while True:
        try:
            if not replayed:
                replayed = True
                _replay(run_dir, follower, view, emit, as_json, follow)
            if not follow:
                break
            events = follower.poll()
            for event in events:
                emit(event)
            if not events:
                if follower.done():
                    for event in follower.poll():
                        emit(event)
                    break
                time.sleep(interval)
        except KeyboardInterrupt:
            if as_json or stopping or _ask_detach_or_stop() == "detach":
                view.end()
                info = runs.inspect_run(run_dir)
                print(f"detached; training continues{f' (pid {info.pid})' if info.alive and info.pid else ''}. "
                      f"Reattach with: tiwiz attach {run_dir}", file=sys.stderr)
                return 0
            runs.send_command(run_dir, "stop")
            stopping = True
            view.line("stop requested: the worker saves and stops after the current step (Ctrl-C detaches)")
    view.end()
    info = runs.inspect_run(run_dir)
    if follower.bad_lines:
        print(f"warning: skipped {follower.bad_lines} unreadable line(s) in {run_dir / runs.EVENTS}", file=sys.stderr)
    for problem in info.problems:
        print(f"warning: {problem}", file=sys.stderr)
    if as_json:
        return 0 if info.state in ("finished", "interrupted") or info.alive else 1
    if info.alive:
        print(f"{info.state} at step {info.step}/{info.max_steps or '?'} (pid {info.pid})")
        return 0
    print(info.description + (f"; last checkpoint: step {info.last_checkpoint}" if info.last_checkpoint else ""))
    if info.state in ("killed", "interrupted", "failed") and (run_dir / runs.STATE).is_file():
        print(f"continue it with: tiwiz resume {run_dir}")
    if info.state == "failed":
        print(f"details: {run_dir / runs.LOG}", file=sys.stderr)
    return 0 if info.state in ("finished", "interrupted") else 1
