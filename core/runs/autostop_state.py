"""Where the auto-stop rule stands (`AutoStopState`): what the trainer's rule (core.training.autostop) returns after
each validation point, what the `validation` event carries, and what the reducer (core.runs.run_state) keeps for
monitors. Part of the run contract, so viewers read it without the trainer. Torch-free and Textual-free."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AutoStopState:
    step: int                 # the step of the latest validation point
    window: int               # steps
    threshold: float
    watched: int              # steps of history so far, capped at window ("watched k of W steps")
    ratio: float | None       # rolling variance / overall variance; None until the window is full
    stop: bool                # the rule fires at this point (only the first firing is True)
    fired_at: int | None      # the first step where it fired, if it has

    @property
    def flat(self) -> bool:
        return self.fired_at is not None

    def label(self) -> str:
        """One line for monitors: 'watching 120 of 310 steps', 'variance ratio 0.42 (stops below 0.15)', ..."""
        if self.fired_at is not None:
            return f"flat since step {self.fired_at} (variance ratio {_fmt(self.ratio)} < {self.threshold:g} over " \
                   f"{self.window} steps)"
        if self.ratio is None:
            return f"watching {self.watched} of {self.window} steps"
        return f"variance ratio {_fmt(self.ratio)} over the last {self.window} steps (stops below {self.threshold:g})"

    def to_dict(self) -> dict:
        return {"step": self.step, "window": self.window, "threshold": self.threshold, "watched": self.watched,
                "ratio": self.ratio, "stop": self.stop, "fired_at": self.fired_at}


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"
