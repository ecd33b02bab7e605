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
    info = runs.inspect_run(run_dir) if runs.is_run_dir(run_dir) else None
    if info is not None and info.alive:
        return {"how": "adopted", "pid": info.pid, "run_dir": str(run_dir)}
    config = job.load_config()
    if not config.output:
        config.output = str(run_dir)
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
