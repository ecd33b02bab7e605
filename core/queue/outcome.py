"""The queue's typed words: a job's state (`JobState`), how a life of its worker was launched (`Launched`), and how a
life ended (`Outcome`), the one shape the local scheduler, the Ray actor and the scheduler's bookkeeping pass around.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from core.runs.vocab import RunPhase


class JobState(str, Enum):
    """Where a job is: JOB.state.json's `state` and the STATE column of `tiwiz queue`."""

    QUEUED = "queued"      # waiting for a slot (also after a retry, or a graceful stop of the scheduler)
    RUNNING = "running"    # a life of its worker was launched
    FINISHED = "finished"  # its run finished
    FAILED = "failed"      # gave up (a bad job file, or every retry used)
    STOPPED = "stopped"    # stopped on request after saving; the next `queue run` continues it

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__

    @property
    def final(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.STOPPED)

    @classmethod
    def parse(cls, value: Any) -> "JobState | None":
        try:
            return cls(value)
        except (ValueError, TypeError):
            return None


class How(str, Enum):
    """How a life of a job's worker began."""

    ADOPTED = "adopted"      # a worker was already alive there (left by an earlier scheduler)
    STARTED = "started"      # the first life
    RESTARTED = "restarted"  # it died before its run folder was written: started again
    RESUMED = "resumed"      # from its last checkpoint
    FINISHED = "finished"    # nothing to do: the run had already finished
    SUBMITTED = "submitted"  # handed to Ray, which starts it when a GPU is free

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__


@dataclass(frozen=True)
class Launched:
    how: How
    pid: int | None = None
    run_dir: str = ""
    host: str | None = None  # where it runs (Ray)
    gpu: str | None = None   # the GPU Ray gave it


@dataclass(frozen=True)
class Outcome:
    """How a life of a job's worker ended: the run's phase (finished, stopped, failed, killed ...) and its words."""

    state: RunPhase
    reason: str = ""
    step: int = 0
    last_checkpoint: int | None = None
    max_steps: int = 0
    description: str = ""  # RunInfo's words: 'killed at step 120 (last checkpoint 100)'
    host: str | None = None

    @classmethod
    def of(cls, info) -> "Outcome":
        """The outcome a run folder shows (`core.runs.listing.RunInfo`)."""
        return cls(state=info.state, reason=info.reason, step=info.step, last_checkpoint=info.last_checkpoint,
                   max_steps=info.max_steps, description=info.description)

    @classmethod
    def failed(cls, reason: str, description: str = "", step: int = 0, last_checkpoint: int | None = None,
               state: RunPhase = RunPhase.FAILED) -> "Outcome":
        return cls(state=state, reason=reason, step=step, last_checkpoint=last_checkpoint,
                   description=description or f"failed: {reason}")
