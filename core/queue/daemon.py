"""The queue's daemon half: `tiwiz queue run` starts the detached scheduler (`python -m core.queue.scheduler`) and
waits until it says it runs, `tiwiz queue stop` asks it to stop; the wizard's queue panel does the same. Torch-free.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from core.atomic import open_own_file
from core.errors import TiwizError
from core.queue import scheduler
from core.queue.jobs import Job, list_jobs
from core.runs import folder as runs

START_TIMEOUT_S = 120.0


def scheduler_settings(previous: dict, gpus: str | None = None, slots: int | None = None, ray: str | None = None,
                       retries: int | None = None, on_finish: str | None = None) -> dict:
    """The settings given, else the previous run's (`previous`), else the defaults (every GPU, else 1 CPU slot).
    `on_finish` is only ever the one given here: a command is never read back from a file (scheduler.json is data,
    and whoever can write the queue folder must not be able to make it run a shell command)."""
    if gpus is None and slots is None and ray is None:
        gpus, slots, ray = ",".join(previous.get("gpus") or []) or None, previous.get("slots"), previous.get("ray")
    settings = {"gpus": None, "slots": 1, "ray": ""}
    if ray:
        settings["ray"] = ray
    elif gpus:
        ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
        if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
            raise TiwizError(f"--gpus {gpus!r}: give distinct GPU ids separated by commas, e.g. --gpus 0,1")
        settings["gpus"] = ids
    elif slots is not None:
        if slots < 1:
            raise TiwizError(f"--slots {slots}: must be 1 or more")
        settings["slots"] = int(slots)
    else:
        settings["gpus"] = scheduler.detect_gpus() or None
    retries = retries if retries is not None else previous.get("retries", scheduler.DEFAULT_RETRIES)
    if not isinstance(retries, int) or retries < 0:
        raise TiwizError(f"--retries {retries}: must be 0 or more")
    settings["retries"] = retries
    settings["on_finish"] = on_finish or ""
    return settings


def check_startable(queue_dir: Path) -> list[Job]:
    """The queue's jobs, or TiwizError when a scheduler already runs it or it has no job."""
    if scheduler.scheduler_alive(queue_dir):
        sched = scheduler.read_scheduler(queue_dir)
        raise TiwizError(f"a scheduler (pid {sched.get('pid')} on {sched.get('host')}) is already running this "
                         "queue; `tiwiz queue` shows it, `tiwiz queue stop` stops it")
    jobs = list_jobs(queue_dir)
    if not jobs:
        raise TiwizError(f"the queue in {queue_dir} is empty; `tiwiz queue add CONFIG.toml` adds a job")
    return jobs


def scheduler_argv(queue_dir: Path, settings: dict, launch_id: str) -> list[str]:
    argv = [str(queue_dir), "--retries", str(settings["retries"]), "--launch-id", launch_id]
    if settings["ray"]:
        argv += ["--ray", settings["ray"]]
    elif settings["gpus"]:
        argv += ["--gpus", ",".join(settings["gpus"])]
    else:
        argv += ["--slots", str(settings["slots"])]
    if settings["on_finish"]:
        argv += ["--on-finish", settings["on_finish"]]
    return argv


def spawn_scheduler(queue_dir: Path, argv: list[str]):
    """`python -m core.queue.scheduler ARGV` in its own session (survives an SSH drop), output to scheduler.log."""
    project = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    queue_dir.mkdir(parents=True, exist_ok=True)
    try:
        log_fd = open_own_file(queue_dir / scheduler.SCHEDULER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as exc:  # never append through a link
        raise TiwizError(f"cannot write {queue_dir / scheduler.SCHEDULER_LOG}: {exc.strerror or exc}") from None
    with os.fdopen(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
        return subprocess.Popen([sys.executable, "-m", "core.queue.scheduler", *argv], env=env, stdin=devnull,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def wait_for_scheduler(queue_dir: Path, proc, launch_id: str, timeout: float = START_TIMEOUT_S) -> dict:
    """Wait until the new scheduler says it runs (or why it could not start: a lock, Ray, a shared-folder check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sched = scheduler.read_scheduler(queue_dir)
        if sched.get("launch_id") == launch_id and sched.get("state") == "failed":
            raise TiwizError(f"the scheduler did not start: {sched.get('reason')}")
        if sched.get("launch_id") == launch_id:
            return sched
        code = proc.poll()
        if code is not None:
            tail = ""
            try:
                lines = (queue_dir / scheduler.SCHEDULER_LOG).read_text(errors="replace").strip().splitlines()
                tail = lines[-1] if lines else ""
            except OSError:
                pass
            raise TiwizError(f"the scheduler exited at once (code {code}): {tail}")
        time.sleep(0.1)
    raise TiwizError(f"the scheduler did not report within {timeout:.0f} s; see {queue_dir / scheduler.SCHEDULER_LOG}")


def start_detached(queue_dir: str | os.PathLike, settings: dict) -> tuple[dict, list[Job]]:
    """Start the detached scheduler (`tiwiz queue run`) and wait until it runs: (its scheduler.json, the jobs).
    TiwizError when one already runs the queue, the queue is empty, or it could not start. A second start racing
    this one is refused by the scheduler's lock (one scheduler per queue)."""
    queue_dir = Path(queue_dir).resolve()
    jobs = check_startable(queue_dir)
    launch_id = uuid.uuid4().hex
    proc = spawn_scheduler(queue_dir, scheduler_argv(queue_dir, settings, launch_id))
    return wait_for_scheduler(queue_dir, proc, launch_id), jobs


def stop_queue(queue_dir: str | os.PathLike) -> int | None:
    """`tiwiz queue stop`: ask the scheduler to stop gracefully (running jobs save and stop, no new job starts) and
    return None; without a live scheduler, ask the running jobs' workers directly and return how many."""
    if scheduler.scheduler_alive(queue_dir):
        scheduler.request_stop(queue_dir)
        return None
    stopped = 0
    for job in list_jobs(queue_dir):  # workers left by a killed scheduler: ask them directly
        if job.state == "running" and job.run_dir and runs.inspect_run(job.run_dir).alive:
            runs.send_command(job.run_dir, "stop")
            stopped += 1
    return stopped
