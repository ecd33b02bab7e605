"""The TUI's view of `core.runs.api`: run summaries for the Start and Embedding screens, following a run, commands.
The state words are `RunPhase`'s, the same as `tiwiz runs` and the monitor. Call `list_runs` from a worker: it reads
every run folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.runs import api as runapi
from core.runs.folder import RunInfo
from core.runs.run_events import RunPhase


@dataclass
class RunSummary:
    path: Path
    name: str
    state: RunPhase  # a str enum: "running", "stopped", ... as everywhere
    step: int
    max_steps: int
    loss: float | None
    description: str = ""  # e.g. "failed at step 6: the disk is full", "killed at step 120 (last checkpoint 100)"


def summarize(info: RunInfo) -> RunSummary:
    return RunSummary(path=Path(info.path), name=info.name, state=info.state, step=info.step,
                      max_steps=info.max_steps, loss=info.last_loss, description=info.description)


def list_runs(root: str | os.PathLike | None = None) -> list[RunSummary]:
    """Runs found on disk, newest first."""
    return [summarize(r) for r in runapi.list_runs(root)]


def follow(run_dir: str | os.PathLike) -> runapi.Follower:
    return runapi.follow(Path(run_dir))


def send_command(run_dir: str | os.PathLike, command: str) -> None:
    runapi.send_command(Path(run_dir), command)


def start(config: dict, root: str | os.PathLike | None = None) -> Path:
    return Path(runapi.start_run(config, root=root))


def resume(run_dir: str | os.PathLike, steps: int | None = None) -> Path:
    return Path(runapi.resume_run(Path(run_dir), steps=steps))
