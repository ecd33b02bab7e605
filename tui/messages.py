"""Typed messages that thread workers post to screens, so message handlers never touch files or processes.

The run follower (`MonitorScreen`'s thread worker) reads events.jsonl and the run's liveness off the UI thread and
posts these; the handlers only fold already-parsed events into the screen's RunView and redraw.
"""

from __future__ import annotations

from textual.message import Message

from core.runs.run_events import RunEvent, RunPhase


class RunHistoryLoaded(Message):
    """The run's history, folded in the worker: `view` (a tui.run_view.RunView) now belongs to the UI thread, and
    `series` (the loss plot's raw, smoothed and validation `Series`, already filled) too."""

    def __init__(self, view, series: tuple | None = None) -> None:
        super().__init__()
        self.view = view
        self.series = series


class RunEventsArrived(Message):
    """Events appended to the run's log since the last message, parsed (skips already turned into warnings)."""

    def __init__(self, events: list[RunEvent]) -> None:
        super().__init__()
        self.events = events


class RunLiveness(Message):
    """What the run folder says about the worker (status.json and the lock): e.g. KILLED when it died silently."""

    def __init__(self, phase: RunPhase, reason: str = "") -> None:
        super().__init__()
        self.phase = phase
        self.reason = reason


class RunFollowFailed(Message):
    """The run could not be followed (no such folder, unreadable log)."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message


class ImageSizesRead(Message):
    """Image sizes read from the headers in a worker (`tui.bucket_scan`): path -> (width, height), None when the file
    cannot be read as an image. Posted in batches while a folder is scanned."""

    def __init__(self, sizes: dict) -> None:
        super().__init__()
        self.sizes = sizes


class BucketsCounted(Message):
    """The dataset's bucket summary line for the settings `key` (`tui.bucket_scan.settings_key`); a screen drops one
    whose key is no longer its current settings' (a slower scan of an earlier value)."""

    def __init__(self, key: tuple, text: str) -> None:
        super().__init__()
        self.key = key
        self.text = text

