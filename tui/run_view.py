"""What the training monitor shows: `core.runs.run_state.RunState` (the one fold of a run's events) plus the run
folder, to resolve the relative paths the events carry, and the GPU line. Plain Python (no Textual)."""

from __future__ import annotations

from pathlib import Path

from core.runs.run_events import RunPhase
from core.runs.run_state import CheckpointRow as Checkpoint  # noqa: F401 - the monitor's name for a row
from core.runs.run_state import RunState
from core.timefmt import format_duration, format_rate  # noqa: F401  (re-exported for the widgets)

# phases after which nothing more happens (until a resume)
TERMINAL_STATES = tuple(p for p in RunPhase if p.final)


class RunView(RunState):
    """A RunState that knows its run folder."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)

    @property
    def state(self) -> RunPhase:
        """The phase (a str enum: compares equal to "running", "stopped", ...)."""
        return self.phase

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.run_dir / p

    def gpu_line(self) -> str:
        """"GPU 7.1/24.0 GiB · 93%" when the run reports CUDA figures, else ""."""
        if not self.gpu:
            return ""
        parts = []
        used, total = self.gpu.get("mem_used"), self.gpu.get("mem_total")
        if isinstance(used, (int, float)):
            mem = f"{used / 2**30:.1f}"
            if isinstance(total, (int, float)) and total:
                mem += f"/{total / 2**30:.1f}"
            parts.append(mem + " GiB")
        util = self.gpu.get("util")
        if isinstance(util, (int, float)):
            parts.append(f"{util:.0f}%")
        return ("GPU " + " · ".join(parts)) if parts else ""
