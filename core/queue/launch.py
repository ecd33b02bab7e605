"""Start one life of a job's worker through the ordinary run API, and read how a life ended. Torch-free.

Used by the local scheduler and by the Ray actor (on whichever node it runs). A live worker is never started twice:
a run that is alive (its worker holds the run lock) is adopted, not launched.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from core.errors import TiwizError
from core.queue.jobs import Job
from core.runs import api as runapi
from core.runs import folder as runs
from core.runs.run_events import RunPhase


@contextlib.contextmanager
def _environ(**values):
    """Set environment variables for the spawn (the run API passes os.environ on to the worker)."""
    old = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def launch(job: Job, gpu: str | None = None, first: bool = False) -> dict:
    """Start or resume the job's run, pinned to `gpu` (CUDA_VISIBLE_DEVICES) when given. `first`: no worker was
    ever started for this job, so its run starts fresh (later lives resume it).

    Returns {"how": "adopted"|"started"|"restarted"|"resumed"|"finished", "pid", "run_dir"}. "adopted": a worker is
    already alive there (left by an earlier scheduler); "finished": the run already completed. Raises TiwizError for
    a job that cannot start (bad config, missing files)."""
    run_dir = Path(job.run_dir) if job.run_dir else None
    if run_dir is None:
        raise TiwizError(f"{job.config_path}: output: the job has no run folder")
    from core.queue.jobs import check_job_output

    check_job_output(run_dir.resolve(), job.queue_dir, str(job.config_path))
    info = runs.inspect_run(run_dir) if runs.is_run_dir(run_dir) else None
    if info is not None and info.alive:
        return {"how": "adopted", "pid": info.pid, "run_dir": str(run_dir)}
    config = job.load_config()
    config.output = str(run_dir)  # the job's run folder: a later edit of `output` never moves a started job
    if gpu is not None and config.device.startswith("cuda:"):
        config.device = "cuda"  # the one visible GPU
    env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}
    with _environ(**env):
        if not first and (run_dir / runs.CONFIG).is_file():
            if info is not None and info.state == "finished" and info.step >= (info.max_steps or config.steps):
                return {"how": "finished", "pid": None, "run_dir": str(run_dir)}
            try:  # from its last checkpoint; a run that died before its first one starts again from step 0
                runapi.resume_run(run_dir)
            except TiwizError as exc:
                if "finished all" in str(exc):  # killed after its final save, before it said so
                    return {"how": "finished", "pid": None, "run_dir": str(run_dir)}
                raise
            how = "resumed"
        elif not first:  # it died before its run folder was written: start it
            if runapi.holds_run(run_dir):
                raise TiwizError(f"{run_dir} already holds a training run but has no {runs.CONFIG}; it is not "
                                 "started over: restore its config.toml (or move the folder away) and retry the job")
            runapi.start_run(config.replace(overwrite=True))
            how = "restarted"
        else:
            runapi.start_run(config)
            how = "started"
    status = runs.read_status(run_dir) or {}
    return {"how": how, "pid": status.get("pid"), "run_dir": str(run_dir)}


def outcome(run_dir: str | os.PathLike) -> dict | None:
    """None while the run's worker is alive; else how the last life ended: state (a RunPhase word: finished,
    stopped, failed, killed ...), reason, step, last_checkpoint, description (RunInfo's words)."""
    run_dir = Path(run_dir)
    if not runs.is_run_dir(run_dir):
        return {"state": "failed", "reason": f"the worker did not start (no run folder at {run_dir})", "step": 0,
                "last_checkpoint": None, "max_steps": 0, "description": "did not start"}
    info = runs.inspect_run(run_dir)
    if info.alive:
        return None
    return {"state": RunPhase.parse(info.state).value, "reason": info.reason, "step": info.step, "last_checkpoint": info.last_checkpoint,
            "max_steps": info.max_steps, "description": info.description}


# ---- the detached scheduler: `tiwiz queue run` / `tiwiz queue stop`, also used by the wizard's queue panel ---------
START_TIMEOUT_S = 120.0


def scheduler_settings(previous: dict, gpus: str | None = None, slots: int | None = None, ray: str | None = None,
                       retries: int | None = None, on_finish: str | None = None) -> dict:
    """The settings given, else the previous run's (`previous`), else the defaults (every GPU, else 1 CPU slot).
    `on_finish` is only ever the one given here: a command is never read back from a file (scheduler.json is data,
    and whoever can write the queue folder must not be able to make it run a shell command)."""
    from core.queue.scheduler import DEFAULT_RETRIES, detect_gpus

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
        settings["gpus"] = detect_gpus() or None
    retries = retries if retries is not None else previous.get("retries", DEFAULT_RETRIES)
    if not isinstance(retries, int) or retries < 0:
        raise TiwizError(f"--retries {retries}: must be 0 or more")
    settings["retries"] = retries
    settings["on_finish"] = on_finish or ""
    return settings


def check_startable(queue_dir: Path) -> list[Job]:
    """The queue's jobs, or TiwizError when a scheduler already runs it or it has no job."""
    from core.queue import scheduler
    from core.queue.jobs import list_jobs

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
    import subprocess
    import sys

    from core.queue.scheduler import SCHEDULER_LOG

    project = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    queue_dir.mkdir(parents=True, exist_ok=True)
    from core.atomic import open_own_file

    try:
        log_fd = open_own_file(queue_dir / SCHEDULER_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    except OSError as exc:  # never append through a link
        raise TiwizError(f"cannot write {queue_dir / SCHEDULER_LOG}: {exc.strerror or exc}") from None
    with os.fdopen(log_fd, "ab") as log, open(os.devnull, "rb") as devnull:
        return subprocess.Popen([sys.executable, "-m", "core.queue.scheduler", *argv], env=env, stdin=devnull,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)


def wait_for_scheduler(queue_dir: Path, proc, launch_id: str, timeout: float = START_TIMEOUT_S) -> dict:
    """Wait until the new scheduler says it runs (or why it could not start: a lock, Ray, a shared-folder check)."""
    import time

    from core.queue.scheduler import SCHEDULER_LOG, read_scheduler

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sched = read_scheduler(queue_dir)
        if sched.get("launch_id") == launch_id and sched.get("state") == "failed":
            raise TiwizError(f"the scheduler did not start: {sched.get('reason')}")
        if sched.get("launch_id") == launch_id:
            return sched
        code = proc.poll()
        if code is not None:
            tail = ""
            try:
                lines = (queue_dir / SCHEDULER_LOG).read_text(errors="replace").strip().splitlines()
                tail = lines[-1] if lines else ""
            except OSError:
                pass
            raise TiwizError(f"the scheduler exited at once (code {code}): {tail}")
        time.sleep(0.1)
    raise TiwizError(f"the scheduler did not report within {timeout:.0f} s; see {queue_dir / SCHEDULER_LOG}")


def start_detached(queue_dir: str | os.PathLike, settings: dict) -> tuple[dict, list[Job]]:
    """Start the detached scheduler (`tiwiz queue run`) and wait until it runs: (its scheduler.json, the jobs).
    TiwizError when one already runs the queue, the queue is empty, or it could not start. A second start racing
    this one is refused by the scheduler's lock (one scheduler per queue)."""
    import uuid

    queue_dir = Path(queue_dir).resolve()
    jobs = check_startable(queue_dir)
    launch_id = uuid.uuid4().hex
    proc = spawn_scheduler(queue_dir, scheduler_argv(queue_dir, settings, launch_id))
    return wait_for_scheduler(queue_dir, proc, launch_id), jobs


def stop_queue(queue_dir: str | os.PathLike) -> int | None:
    """`tiwiz queue stop`: ask the scheduler to stop gracefully (running jobs save and stop, no new job starts) and
    return None; without a live scheduler, ask the running jobs' workers directly and return how many."""
    from core.queue import scheduler
    from core.queue.jobs import list_jobs

    if scheduler.scheduler_alive(queue_dir):
        scheduler.request_stop(queue_dir)
        return None
    stopped = 0
    for job in list_jobs(queue_dir):  # workers left by a killed scheduler: ask them directly
        if job.state == "running" and job.run_dir and runs.inspect_run(job.run_dir).alive:
            runs.send_command(job.run_dir, "stop")
            stopped += 1
    return stopped
