"""The TUI's thin view of `core.runs.api` (owned by the runs engineer): run summaries for the start screen, following a
run's events, commands. Nothing here knows the run-folder layout; it all goes through core.runs.api."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import TiwizError


def _runapi():
    try:
        from core.runs import api as runapi
    except ImportError as exc:  # not built yet on this checkout
        raise TiwizError("Training runs are not available in this build (core.runs.api is missing).") from exc
    return runapi


@dataclass
class RunSummary:
    path: Path
    name: str
    state: str
    step: int
    max_steps: int
    loss: float | None


def _get(obj, *names, default=None):
    for name in names:
        if isinstance(obj, dict):
            if obj.get(name) is not None:
                return obj[name]
        elif getattr(obj, name, None) is not None:
            return getattr(obj, name)
    return default


def summarize(info) -> RunSummary:
    path = Path(_get(info, "path", "run_dir", "dir", default="."))
    loss = _get(info, "loss", "last_loss")
    try:
        loss = float(loss) if loss is not None else None
    except (TypeError, ValueError):
        loss = None
    return RunSummary(
        path=path,
        name=str(_get(info, "name", default=path.name)),
        state=str(_get(info, "state", default="unknown")),
        step=int(_get(info, "step", default=0) or 0),
        max_steps=int(_get(info, "max_steps", "steps", default=0) or 0),
        loss=loss,
    )


def list_runs(root: str | os.PathLike | None = None) -> list[RunSummary]:
    """Runs found on disk, newest first; [] when runs are not available."""
    try:
        runapi = _runapi()
    except TiwizError:
        return []
    runs = runapi.list_runs(root) if root is not None else runapi.list_runs()
    return [summarize(r) for r in runs]


def follow(run_dir: str | os.PathLike):
    return _runapi().follow(Path(run_dir))


def send_command(run_dir: str | os.PathLike, command: str) -> None:
    _runapi().send_command(Path(run_dir), command)


def start(config: dict, root: str | os.PathLike | None = None) -> Path:
    runapi = _runapi()
    return Path(runapi.start_run(config, root=root) if root is not None else runapi.start_run(config))


def resume(run_dir: str | os.PathLike, steps: int | None = None) -> Path:
    result = _runapi().resume_run(Path(run_dir), steps=steps)
    return Path(result) if result else Path(run_dir)
