"""Auto-stop: the DVAR rule (Voronov et al., NeurIPS 2023, "Is This Loss Informative?").

Training is done when the fixed-seed validation loss has stopped moving: the variance of its values over the last
`window` steps, divided by the variance of all its values so far, falls below `threshold`. While the loss still falls,
the recent values spread about as much as all of them (ratio near 1); once it is flat, the recent spread is noise
only, small against the early drop. The paper computes the loss every step; we use whatever validation points fall in
the window (at least MIN_POINTS of them).

Pure Python, torch-free: the trainer feeds `update(step, val_loss)` and the returned `AutoStopState` (a type of the
run contract, core.runs.autostop_state) goes into events.
The rule also runs "advisory" when auto-stop is off: `fired_at` records where it would have stopped, which is the
suggested best step of a run without a hold-out.
"""

from __future__ import annotations

from core.runs.autostop_state import AutoStopState

MIN_POINTS = 5  # fewer validation points than this in a window give no usable variance


def _variance(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return sum((v - mean) ** 2 for v in values) / n


class AutoStop:
    """Feed validation losses in step order; `update` returns the rule's state after each."""

    def __init__(self, window: int, threshold: float, min_points: int = MIN_POINTS) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = int(window)
        self.threshold = float(threshold)
        self.min_points = int(min_points)
        self.history: list[tuple[int, float]] = []
        self.fired_at: int | None = None

    def update(self, step: int, val_loss: float) -> AutoStopState:
        step, val_loss = int(step), float(val_loss)
        if self.history and step <= self.history[-1][0]:  # a repeated point (e.g. after resume): replace it
            self.history = [(s, v) for s, v in self.history if s < step]
        self.history.append((step, val_loss))
        first = self.history[0][0]
        watched = min(step - first, self.window)
        ratio = None
        recent = [v for s, v in self.history if s > step - self.window]
        if step - first >= self.window and len(recent) >= self.min_points:
            total = _variance([v for _, v in self.history])
            ratio = _variance(recent) / total if total > 0 else 0.0
        stop = False
        if ratio is not None and ratio < self.threshold and self.fired_at is None:
            self.fired_at, stop = step, True
        return AutoStopState(step=step, window=self.window, threshold=self.threshold, watched=watched, ratio=ratio,
                             stop=stop, fired_at=self.fired_at)

    # resume: the history travels in state/latest.pt
    def state_dict(self) -> dict:
        return {"history": [list(p) for p in self.history], "fired_at": self.fired_at}

    def load_state_dict(self, state: dict | None) -> None:
        if not state:
            return
        self.history = [(int(s), float(v)) for s, v in state.get("history", [])]
        fired = state.get("fired_at")
        self.fired_at = None if fired is None else int(fired)


POINTS_PER_WINDOW = 10


def points_needed(window: int) -> int:
    """The validation cadence that gives a window about POINTS_PER_WINDOW points (twice MIN_POINTS). DVAR measured
    every step; a validation pass costs several training steps (validation_images x 5 timesteps, forward only), so the
    cadence is the auto-stop run's overhead. 20 points a window (every 5 steps at window 100) were a fifth to a third
    of the training time to the first good embedding on the shipped world model; 10 points (every 10 steps) halve
    that, and replaying the rule on the every-5 curves of 5 seeds moved its stop by 0-5 steps (5 points, every 20,
    stopped one seed at step 100 instead of 270; bench/RESULTS.md)."""
    return max(1, int(window) // POINTS_PER_WINDOW)


def unreachable_reason(validate_every: int, window: int, end_step: int, min_points: int = MIN_POINTS) -> str | None:
    """Why the rule cannot fire in a run validated every `validate_every` steps from step 0 to `end_step`, else None.
    It needs a full window (a point at least `window` steps after the first, at step 0) holding `min_points` points;
    at a cadence V a window holds ceil(window / V) of them."""
    if validate_every <= 0:
        return "validation is off (validate_every = 0)"
    per_window = -(-window // validate_every)
    if per_window < min_points:
        fixes = [f"auto_stop_window to {min_points * validate_every} or more"]
        if window >= min_points:
            fixes.insert(0, f"validate_every to {window // min_points} or less (-1 chooses one)")
        return (f"validate_every {validate_every} gives {per_window} validation point{'s' * (per_window != 1)} per "
                f"auto_stop_window of {window} steps and the rule needs {min_points}; set {' or '.join(fixes)}")
    last = end_step // validate_every * validate_every
    if last < window:
        return (f"the run ends at step {end_step}, before a full auto_stop_window of {window} steps of validation "
                f"(every {validate_every} steps) is in; lower auto_stop_window or raise steps")
    return None
