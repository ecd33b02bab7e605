"""Start one life of a job's worker through the ordinary run API, and read how a life ended. Torch-free.

Used by the local scheduler and by the Ray actor (on whichever node it runs). A live worker is never started twice:
a run that is alive (its worker holds the run lock) is adopted, not launched. Starting and stopping the scheduler
itself is `core.queue.daemon`.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import TiwizError
from core.queue.jobs import Job, check_job_output
from core.queue.outcome import How, Launched, Outcome
from core.runs import api as runapi
from core.runs import folder as runs
from core.runs.vocab import RunPhase


def launch(job: Job, gpu: str | None = None, first: bool = False) -> Launched:
    """Start or resume the job's run, pinned to `gpu` (CUDA_VISIBLE_DEVICES in the worker's environment) when given.
    `first`: no worker was ever started for this job, so its run starts fresh (later lives resume it). ADOPTED: a
    worker is already alive there (left by an earlier scheduler); FINISHED: the run already completed. Raises
    TiwizError for a job that cannot start (bad config, missing files)."""
    run_dir = Path(job.run_dir) if job.run_dir else None
    if run_dir is None:
        raise TiwizError(f"{job.config_path}: output: the job has no run folder")
    check_job_output(run_dir.resolve(), job.queue_dir, str(job.config_path))
    info = runs.inspect_run(run_dir) if runs.is_run_dir(run_dir) else None
    if info is not None and info.alive:
        return Launched(How.ADOPTED, info.pid, str(run_dir))
    config = job.load_config()
    config.output = str(run_dir)  # the job's run folder: a later edit of `output` never moves a started job
    if gpu is not None and config.device.startswith("cuda:"):
        config.device = "cuda"  # the one visible GPU
    env = {"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else None
    if not first and (run_dir / runs.CONFIG).is_file():
        if info is not None and info.state == RunPhase.FINISHED and info.step >= (info.max_steps or config.steps):
            return Launched(How.FINISHED, None, str(run_dir))
        try:  # from its last checkpoint; a run that died before its first one starts again from step 0
            runapi.resume_run(run_dir, env=env)
        except runapi.AlreadyFinished:  # killed after its final save, before it said so
            return Launched(How.FINISHED, None, str(run_dir))
        how = How.RESUMED
    elif not first:  # it died before its run folder was written: start it
        if runs.holds_run(run_dir):
            raise TiwizError(f"{run_dir} already holds a training run but has no {runs.CONFIG}; it is not "
                             "started over: restore its config.toml (or move the folder away) and retry the job")
        runapi.start_run(config.replace(overwrite=True), env=env)
        how = How.RESTARTED
    else:
        runapi.start_run(config, env=env)
        how = How.STARTED
    found = runs.read_run_status(run_dir)
    return Launched(how, found[0].pid if found else None, str(run_dir))


def outcome(run_dir: str | os.PathLike) -> Outcome | None:
    """None while the run's worker is alive; else how the last life ended (the run folder's phase and words)."""
    run_dir = Path(run_dir)
    if not runs.is_run_dir(run_dir):
        return Outcome.failed(f"the worker did not start (no run folder at {run_dir})", "did not start")
    info = runs.inspect_run(run_dir)
    return None if info.alive else Outcome.of(info)
