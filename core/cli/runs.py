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

from core.cli.progress import ProgressView
from core.errors import TiwizError
from core.runs import api as runapi
from core.runs import folder as runs
from core.runs.run_events import RunPhase
from core.safe_text import safe_print

ASK_TIMEOUT_S = 30.0


def register(subparsers) -> None:
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
    p.add_argument("--allow-data-change", action="store_true",
                   help="continue although the data folder changed since the checkpoint (images added, removed or "
                        "edited); without it such a resume is refused and the changes are listed")
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


def runs_table(found: list[runs.RunInfo], tty: bool = False) -> list[str]:
    """The rows of `tiwiz runs`: the STATE column holds the phase word only; a run's longer story (why it failed,
    where it was killed, what is damaged) goes on its own indented line below it, so a long reason never widens the
    columns. On a terminal that line is cut to the width; in a pipe it is whole."""
    rows = [("NAME", "STATE", "STEP", "LOSS", "AGE", "CHECKPOINT", "BEST")]
    for info in found:
        rows.append((safe_line(info.path.name), info.state.value, f"{info.step}/{info.max_steps or '?'}",
                     f"{info.last_loss:.4f}" if info.last_loss is not None else "-", _age(info.updated),
                     str(info.last_checkpoint) if info.last_checkpoint else "-",
                     _best_cell(info)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    cols = shutil.get_terminal_size((80, 24)).columns
    over = sum(widths) + 2 * (len(widths) - 1) - (cols - 1)
    if tty and over > 0:  # a terminal too narrow for long run names: cut the names in the middle, never wrap a row
        widths[0] = max(len("NAME"), widths[0] - over)
        rows = [(_middle_cut(row[0], widths[0]), *row[1:]) for row in rows]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            continue
        info = found[i - 1]
        detail = info.description
        if detail != info.state.value:
            detail = "  " + safe_line(detail)
            if tty and len(detail) > cols - 1:
                detail = detail[: max(10, cols - 2)] + "…"
            lines.append(detail)
    return lines


def _middle_cut(text: str, width: int) -> str:
    """"zxq-portrait…-101010": the start and the end (a run folder's time stamp) of a name too long for `width`."""
    if len(text) <= width:
        return text
    tail = min(7, (width - 1) // 2)
    return text[: width - 1 - tail] + "…" + text[len(text) - tail:]


BEST_SHORT = {"holdout": "held-out", "flat": "flat", "validation": "val loss"}  # run_events.BEST_BASES, shortened


def _best_cell(info: runs.RunInfo) -> str:
    """'240 (held-out)': the suggested best step and what it rests on (`--json` gives both in full)."""
    if info.best_step is None:
        return "-"
    short = BEST_SHORT.get(info.best_basis or "")
    return f"{info.best_step} ({short})" if short else str(info.best_step)


def safe_line(text: str) -> str:
    """One line of user-controlled text: control characters (a newline in a reason, escape sequences) shown, not
    obeyed."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def cmd_runs(args) -> int:
    root = Path(args.root) if args.root else runs.default_root()
    found = runs.list_runs(root)
    if args.json:
        for info in found:
            safe_print(json.dumps({"path": str(info.path), "name": info.name, "state": info.state,
                              "description": info.description, "step": info.step, "max_steps": info.max_steps,
                              "last_loss": info.last_loss, "last_checkpoint": info.last_checkpoint,
                              "updated": info.updated, "pid": info.pid, "alive": info.alive,
                              "problems": info.problems, "best_step": info.best_step,
                              "best_basis": info.best_basis}))
        return 0
    if not found:
        safe_print(f"no runs under {root}")
        return 0
    for line in runs_table(found, sys.stdout.isatty()):
        safe_print(line)
    for info in found:
        for problem in info.problems:
            safe_print(f"warning: {info.path.name}: {problem}", file=sys.stderr)
    return 0


# ---- tiwiz train (detached) ---------------------------------------------------------------------------------------
def wait_until_running(run_dir: Path, timeout: float = 15.0, pid: int | None = None) -> runs.RunInfo:
    """Wait until the worker holds the run (it took the lock and wrote its pid); raise if it died starting. With
    `pid` (the worker we spawned), a live run of another worker (one that won the folder's lock) is an error too."""
    deadline = time.monotonic() + timeout
    while True:
        info = runs.inspect_run(run_dir)
        if pid is not None and not runs.pid_is_worker(pid, run_dir):
            if (info.alive and info.pid != pid) or runs.lock_is_held(run_dir):  # ours lost the lock to another
                who = f" (pid {info.pid})" if info.alive and info.pid != pid else ""
                raise TiwizError(f"{run_dir}: a worker is already training there{who}; "
                                 f"`tiwiz attach {run_dir}` to watch it")
            if info.state == "starting":
                info = runs.inspect_run(run_dir)
            break
        if info.state != "starting" and (pid is None or info.pid == pid):
            break
        if time.monotonic() > deadline:
            return info
        time.sleep(0.1)
    if not info.alive and info.state not in (RunPhase.FINISHED, RunPhase.STOPPED):
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
    spawned: list[int] = []
    run_dir = runapi.start_run(config, root=root, spawned=spawned)
    info = wait_until_running(run_dir, pid=spawned[0] if spawned else None)
    if detach:
        safe_print(f"training in the background (pid {info.pid}). Watch: tiwiz attach {run_dir}   "
              f"Stop: tiwiz stop {run_dir}")
        safe_print(run_dir)
        return 0
    code = attach(run_dir)
    safe_print(run_dir)
    return code


# ---- tiwiz stop ---------------------------------------------------------------------------------------------------
def cmd_stop(args) -> int:
    run_dir = runs.resolve_run(args.run, args.root)
    info = runs.inspect_run(run_dir)
    if not info.alive:
        safe_print(f"{run_dir} is not running ({info.description})", file=sys.stderr)
        return 1
    if args.no_wait:
        runs.send_command(run_dir, "stop")
        safe_print(f"stop requested; the worker saves and stops after the current step ({run_dir})")
        return 0
    safe_print(f"stopping {run_dir.name} (pid {info.pid}): it saves and stops after the current step ...", flush=True)
    info = runapi.stop_run(run_dir, timeout=args.timeout)
    if info.alive:
        safe_print(f"still running after {args.timeout:.0f}s; it stops after its current step. Check with "
              f"`tiwiz runs`", file=sys.stderr)
        return 1
    safe_print(f"{info.description}; last checkpoint: step {info.last_checkpoint or '-'}")
    if info.state in (RunPhase.STOPPED, RunPhase.KILLED):
        safe_print(f"continue it with: tiwiz resume {run_dir}")
    return 0 if info.state in (RunPhase.STOPPED, RunPhase.FINISHED) else 1


# ---- tiwiz resume -------------------------------------------------------------------------------------------------
def cmd_resume(args) -> int:
    run_dir = runs.resolve_run(args.run, args.root)
    restart = runapi.restarts_from_zero(run_dir)
    run_dir = runapi.resume_run(run_dir, steps=args.steps,
                                allow_data_change=getattr(args, "allow_data_change", False))
    if restart:
        safe_print(f"{run_dir.name} stopped before its first checkpoint: starting it again from step 0 with the same "
              "config", flush=True)
    if args.detach:
        safe_print(f"resumed; watch it with: tiwiz attach {run_dir}")
        safe_print(run_dir)
        return 0
    return attach(run_dir)


# ---- tiwiz attach -------------------------------------------------------------------------------------------------
def cmd_attach(args) -> int:
    run_dir = runs.resolve_run(args.run, args.root)
    return attach(run_dir, as_json=args.json, follow=not args.no_follow)


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
    safe_print(f"run: {run_dir}", flush=True)
    view.replay(history)
    if follow and not any(e.get("type") == "started" for e in history) and runs.inspect_run(run_dir).alive:
        safe_print("waiting for the worker to load the model ...", flush=True)


def _attach(run_dir: Path, as_json: bool, follow: bool, interval: float) -> int:
    follower = runapi.follow(run_dir)
    view = ProgressView(run_dir)
    emit = (lambda e: safe_print(json.dumps(e, ensure_ascii=False), flush=True)) if as_json else view.live
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
                safe_print(f"detached; training continues{f' (pid {info.pid})' if info.alive and info.pid else ''}. "
                      f"Reattach with: tiwiz attach {run_dir}", file=sys.stderr)
                return 0
            runs.send_command(run_dir, "stop")
            stopping = True
            view.line("stop requested: the worker saves and stops after the current step (Ctrl-C detaches)")
    view.end()
    info = runs.inspect_run(run_dir)
    if follower.bad_lines:
        safe_print(f"warning: skipped {follower.bad_lines} unreadable line(s) in {run_dir / runs.EVENTS}", file=sys.stderr)
    for problem in info.problems:
        safe_print(f"warning: {problem}", file=sys.stderr)
    if as_json:
        return 0 if info.state in (RunPhase.FINISHED, RunPhase.STOPPED) or info.alive else 1
    if info.alive:
        safe_print(f"{info.state} at step {info.step}/{info.max_steps or '?'} (pid {info.pid})")
        return 0
    safe_print(info.description + (f"; last checkpoint: step {info.last_checkpoint}" if info.last_checkpoint else ""))
    if info.state in (RunPhase.KILLED, RunPhase.STOPPED, RunPhase.FAILED) and (run_dir / runs.STATE).is_file():
        safe_print(f"continue it with: tiwiz resume {run_dir}")
    if info.state == RunPhase.FAILED:
        safe_print(f"details: {run_dir / runs.LOG}", file=sys.stderr)
    return 0 if info.state in (RunPhase.FINISHED, RunPhase.STOPPED) else 1
