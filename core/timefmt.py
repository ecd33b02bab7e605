"""The one duration and rate format every front end uses (the CLI progress line, `tiwiz runs`, the monitor)."""

from __future__ import annotations

import math


def format_duration(seconds: float | None, unknown: str = "--:--") -> str:
    """`MM:SS` below an hour, `H:MM:SS` from an hour on; `unknown` for None, NaN, infinity or a negative value."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return unknown
    seconds = int(seconds)  # truncated, as tqdm does
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def format_rate(it_s: float | None) -> str:
    """tqdm's habit: it/s when at least one step a second, s/it below."""
    if not it_s or it_s <= 0 or not math.isfinite(it_s):
        return "-- it/s"
    if it_s >= 1:
        return f"{it_s:.2f} it/s"
    return f"{1 / it_s:.2f} s/it"
