"""A1111's learning-rate schedule strings: `"0.005:100, 1e-3:1000, 1e-5"`.

Semantics (matching AUTOMATIC1111's `LearnRateScheduler`):
- each `rate:step` pair holds `rate` until the absolute step `step` (exclusive) is reached;
- a bare `rate`, or `rate:-1`, holds until the run's max steps; anything after it is ignored;
- if the last pair ends before max steps, training ends there (A1111 behaviour, kept because users rely on it;
  `Schedule.end_step` reports it and the trainer warns).

Torch-free: the config validates with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import TiwizError

EXAMPLE = '"0.005" or "0.005:100, 1e-3:1000, 1e-5" (rate until step 100, then until 1000, then to the end)'


@dataclass(frozen=True)
class Schedule:
    """Parsed schedule: `pairs` of (rate, end_step), end_step None meaning "until max steps"."""

    text: str
    pairs: tuple[tuple[float, int | None], ...]

    def end_step(self, max_steps: int) -> int:
        """The step training actually ends at: max_steps, or earlier where the last pair ends sooner."""
        last_end = self.pairs[-1][1]
        return max_steps if last_end is None else min(max_steps, last_end)

    def rate_at(self, step: int) -> float:
        """Rate for the optimizer update taken when `step` updates are already done (0-based)."""
        for rate, end in self.pairs:
            if end is None or step < end:
                return rate
        return self.pairs[-1][0]

    def stops_early(self, max_steps: int) -> bool:
        return self.end_step(max_steps) < max_steps


def parse_schedule(text: str | float | int, field: str = "lr") -> Schedule:
    """Parse a schedule string; raise TiwizError naming `field` and showing an example on any problem."""
    if isinstance(text, bool):
        raise TiwizError(f"{field}: expected a number or a schedule like {EXAMPLE} (got {text!r})")
    if isinstance(text, (int, float)):
        text = repr(float(text)) if isinstance(text, float) else str(text)
    raw = str(text)
    pairs: list[tuple[float, int | None]] = []
    previous_end = 0
    for index, chunk in enumerate(raw.split(",")):
        chunk = chunk.strip()
        if not chunk:
            continue
        parts = chunk.split(":")
        if len(parts) > 2:
            raise TiwizError(f"{field}: {chunk!r} has more than one ':'; write rate:step pairs like {EXAMPLE}")
        rate = _parse_rate(parts[0].strip(), chunk, field)
        if len(parts) == 1:
            pairs.append((rate, None))
            break
        end = _parse_step(parts[1].strip(), chunk, field)
        if end == -1:
            pairs.append((rate, None))
            break
        if end <= previous_end:
            raise TiwizError(
                f"{field}: the step in {chunk!r} must be greater than the previous one ({previous_end}); "
                f"steps are absolute, e.g. {EXAMPLE}"
            )
        pairs.append((rate, end))
        previous_end = end
    if not pairs:
        raise TiwizError(f"{field}: empty learning-rate schedule; expected {EXAMPLE}")
    return Schedule(text=raw, pairs=tuple(pairs))


def _parse_rate(value: str, chunk: str, field: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        raise TiwizError(f"{field}: {value!r} in {chunk!r} is not a number; expected {EXAMPLE}") from None
    if not math.isfinite(rate) or rate < 0:
        raise TiwizError(f"{field}: rate {value!r} must be a finite number >= 0")
    return rate


def _parse_step(value: str, chunk: str, field: str) -> int:
    try:
        step = int(value)
    except ValueError:
        raise TiwizError(
            f"{field}: step {value!r} in {chunk!r} is not a whole number; expected {EXAMPLE}"
        ) from None
    if step < -1 or step == 0:
        raise TiwizError(f"{field}: step {value!r} in {chunk!r} must be a positive step number (or -1 for 'to the end')")
    return step
