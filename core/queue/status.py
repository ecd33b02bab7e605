"""What `tiwiz queue` and the start screen show for each job: state, GPU, step/max, ETA, run folder. Torch-free.

Progress and ETA come from the run folder through the one run reducer (`core.runs.run_state`), folded over the tail
of the run's event log, with liveness from `core.runs.folder`."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from core.queue.jobs import Job, list_jobs
from core.runs import folder as runs
from core.runs.run_state import RunState

TAIL_BYTES = 32 << 10  # enough for the last step event of any run


@dataclass
class JobRow:
    name: str
    state: str  # the job's state; for a running job, the run's phase (starting, running, stopping)
    gpu: str | None
    step: int
    max_steps: int
    eta: float | None
    run_dir: str
    attempts: int
    reason: str
    started: bool = False  # the run folder exists (something to attach to)

    def as_dict(self) -> dict:
        return asdict(self)


def job_row(job: Job, retries: int | None = None) -> JobRow:
    step = max_steps = 0
    eta = None
    state = job.state.value
    started = bool(job.run_dir) and runs.is_run_dir(Path(job.run_dir))
    if started:
        info = runs.inspect_run(job.run_dir)
        run = RunState.fold(runs.last_events(job.run_dir, TAIL_BYTES))
        run.set_liveness(info.state, info.reason)
        step, max_steps = max(info.step, run.step), info.max_steps or run.max_steps
        if job.state == "running" and info.alive:
            state = str(run.phase) if run.phase.active else info.state
            eta = run.eta
    if job.state == "queued" and job.attempts:
        state = f"queued (retry {job.attempts}" + (f"/{retries})" if retries is not None else ")")
    gpu = job.gpu if job.state == "running" and job.gpu not in (None, "") else None
    return JobRow(name=job.name, state=state, gpu=gpu, step=step, max_steps=max_steps, eta=eta,
                  run_dir=job.run_dir, attempts=job.attempts, reason=job.reason,
                  started=started)


def job_rows(queue_dir: str | os.PathLike, retries: int | None = None) -> list[JobRow]:
    return [job_row(job, retries) for job in list_jobs(queue_dir)]
