"""The one way background work reaches a screen (harlequin's style).

A screen's thread worker returns its result; `WorkerResults.on_worker_state_changed` hands a successful result to the
screen's `<worker name>_done(result)` on the UI thread, and an exception to `worker_failed`, which shows it: a problem
the user can fix (`TiwizError`, a missing or unreadable file) in the screen's message line, anything else in a modal.
Streams (a run's events, image sizes in batches) travel as typed messages (`tui/messages.py`) instead.

`OneAtATime` is the "poll, never two at once" guard: it starts a worker unless the last one it started still runs.
"""

from __future__ import annotations

from typing import Callable

from textual.worker import Worker, WorkerState

from core.errors import TiwizError
from tui.errors import error_text


class WorkerResults:
    """Mixed into a Screen: results and errors of its workers, all through Worker.StateChanged."""

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if event.state == WorkerState.SUCCESS and worker.node is self:
            done = getattr(self, f"{worker.name}_done", None)
            if done is not None:
                done(worker.result)
        elif event.state == WorkerState.ERROR:
            event.stop()
            self.worker_failed(worker, worker.error)

    def worker_failed(self, worker: Worker, error: BaseException | None) -> None:
        if isinstance(error, (TiwizError, OSError)):
            screen = self if hasattr(self, "show_message") else self.screen  # a widget's worker: its screen says it
            screen.show_message(error_text(error))
            return
        from tui.screens.dialogs import MessageModal

        self.app.push_screen(MessageModal("Something went wrong", error_text(error)))


class OneAtATime:
    """Starts workers through `start` (a @work method), never two at once: a call while the last one runs does
    nothing and returns None."""

    def __init__(self, start: Callable[..., Worker]) -> None:
        self._start = start
        self.worker: Worker | None = None

    @property
    def busy(self) -> bool:
        return self.worker is not None and not self.worker.is_finished

    def __call__(self, *args, **kwargs) -> Worker | None:
        if self.busy:
            return None
        self.worker = self._start(*args, **kwargs)
        return self.worker
