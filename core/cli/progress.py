"""The one progress display of the CLI (`tiwiz train`, `attach`, `demo`), driven by the run-state reducer.

On a terminal: one live tqdm-style line, redrawn at most 4 times a second, with a line above it for every event worth
reading (checkpoint, preview, warning, ...). Elsewhere (a pipe, a log file): the same event lines and, at most every
10 s and at the end, a plain progress line (no bar: a log is read, not watched).
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from core.runs import run_events as ev
from core.safe_text import safe_text
from core.runs.run_state import RunState
from core.timefmt import format_duration


def _fmt_time(seconds: float | None) -> str:
    return format_duration(seconds, unknown="?")


def progress_line(state: RunState, width: int = 20) -> str:
    """tqdm's format: ` 42%|████▏     | 420/1000 [03:10<04:22, 2.21it/s, loss=0.0734, avg=0.0801, lr=5.00e-03]`
    (elapsed<left); `val=` joins once a validation loss exists."""
    step, total = state.step, state.max_steps
    frac = min(1.0, step / total) if total else 0.0
    eighths = int(frac * width * 8)
    bar = "█" * (eighths // 8) + (" ▏▎▍▌▋▊▉"[eighths % 8] if eighths % 8 else "")
    bar = bar.ljust(width)
    rate = state.it_s or 0.0
    rate_s = f"{rate:.2f}it/s" if rate >= 1 else (f"{1 / rate:.2f}s/it" if rate > 0 else "?it/s")
    eta = (total - step) / rate if rate > 0 and total else None
    parts = [rate_s]
    for value, label, fmt in ((state.last_loss, "loss", "{:.4f}"), (state.loss_avg, "avg", "{:.4f}"),
                              (state.last_val_loss, "val", "{:.4f}"), (state.lr, "lr", "{:.2e}")):
        if isinstance(value, (int, float)):
            parts.append(f"{label}={fmt.format(value)}")
    return f"{frac * 100:3.0f}%|{bar}| {step}/{total} [{_fmt_time(state.elapsed)}<{_fmt_time(eta)}, {', '.join(parts)}]"


def plain_progress(state: RunState) -> str:
    """The progress for a log: "step 120/300 (40%) · 2.28 it/s · loss 0.0063 · val 0.0430 · 00:52 elapsed, 01:18
    left"."""
    step, total = state.step, state.max_steps
    parts = [f"step {step}/{total}" + (f" ({100 * step // total}%)" if total else "")]
    rate = state.it_s or 0.0
    if rate:
        parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it")
    for value, label in ((state.last_loss, "loss"), (state.last_val_loss, "val")):
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.4f}")
    left = (total - step) / rate if rate > 0 and total else None
    parts.append(f"{_fmt_time(state.elapsed)} elapsed" + (f", {_fmt_time(left)} left" if left is not None else ""))
    return " · ".join(parts)


def describe_event(event: ev.RunEvent, run_dir: Path | None = None, state: RunState | None = None) -> str | None:
    """One line for an event worth a line of its own (None for steps, shown only as progress). With the run's
    `state` (folded up to the event before this one) a validation line leaves out what did not change: the best step
    unless it moved, the auto-stop rule while it is off or still filling its window."""

    def path(rel: str) -> str:
        if not rel:
            return "?"
        return str(run_dir / rel) if run_dir is not None else rel

    if isinstance(event, ev.Started):
        verb = "resumed at step" if event.resumed else "started at step"
        family = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}.get(event.family, event.family)
        return (f"{verb} {event.step} of {event.max_steps}: {event.name} on {event.device or '?'} "
                f"({event.precision or '?'}), {event.n_images} images, model {event.model}"
                + (f" ({family})" if family else ""))
    if isinstance(event, ev.Checkpoint):
        text = f"checkpoint at step {event.step}: {path(event.safetensors)}" + (" (best so far)" if event.best else "")
        if event.norms:
            near = [f"{row[0][0]}" for row in event.nearest or [] if row]
            text += f"; norms {', '.join(f'{n:.3f}' for n in event.norms)}" + (
                f", nearest {', '.join(near)}" if near else "")
        return text
    if isinstance(event, ev.Preview):
        return f"preview at step {event.step}: {path(event.path)}"
    if isinstance(event, ev.Validation):
        return _validation_line(event, state)
    if isinstance(event, ev.Warning):
        return f"warning: {event.message}"
    if isinstance(event, ev.Compile):
        if event.seconds is None:
            return f"training step: {event.mode} ({event.reason})"
        if event.shape == "update":
            return f"captured the update of the vectors in {event.seconds:.1f} s ({event.mode})"
        return f"captured the step for {event.shape} in {event.seconds:.1f} s ({event.mode}, {event.graphs} shape(s))"
    if isinstance(event, ev.MemoryPlan):
        return f"gradient checkpointing {'on' if event.gradient_checkpointing else 'off'}: {event.reason}"
    if isinstance(event, ev.Error):
        return f"error: {event.message}"
    if isinstance(event, ev.Stopping):
        return f"stopping after step {event.step} ({event.reason or 'stop requested'}): saving ..."
    if isinstance(event, ev.Stopped):
        return f"stopped at step {event.step} ({event.reason}): {path(event.safetensors)}" + _best_text(event, path)
    if isinstance(event, ev.Finished):
        why = f" ({event.message})" if event.message else ""
        return f"finished at step {event.step}{why}: {path(event.safetensors)}" + _best_text(event, path)
    return None


def _validation_line(event: ev.Validation, state: RunState | None) -> str:
    text = f"validation loss at step {event.step}: {event.val_loss:.4f}"
    if event.holdout_loss is not None:
        text += f", held out {event.holdout_loss:.4f}"
    if event.best_step is not None and (state is None or event.best_step != state.best_step):
        text += f" ({ev.best_step_text(event.best_step, event.best_basis)})"
    watched = event.auto_stop_window is not None and event.auto_stop_threshold is not None
    off = state is not None and state.auto_stop is False
    telling = event.auto_stop_ratio is not None or event.auto_stop_fired_at is not None
    if watched and not off and (state is None or telling):
        from core.runs.autostop_state import AutoStopState

        text += "; auto-stop: " + AutoStopState(
            step=event.step, window=event.auto_stop_window, threshold=event.auto_stop_threshold,
            watched=event.auto_stop_watched or 0, ratio=event.auto_stop_ratio, stop=False,
            fired_at=event.auto_stop_fired_at).label()
    return text


def _best_text(event, path) -> str:
    if event.best_step is None:
        return ""
    where = f": {path(event.best_checkpoint)}" if event.best_checkpoint else ""
    return f"\nsuggested {ev.best_step_text(event.best_step, event.best_basis)}{where}"


class ProgressView:
    """Renders a run's events through a RunState. `replay(history)` summarises what already happened; `live(event)`
    follows; `note(text)` prints a line of the caller's; `end()` leaves the last progress line in place."""

    def __init__(self, run_dir: Path | None = None, out=None, tty: bool | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.out = out or sys.stdout
        self.tty = tty if tty is not None else bool(getattr(self.out, "isatty", lambda: False)())
        self.state = RunState()
        self._drawn_at = 0.0
        self._drawn_step: int | None = None
        self._bar_visible = False
        self.min_interval = 0.25 if self.tty else 10.0

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def note(self, text: str) -> None:
        if self._bar_visible:
            self._write("\r\x1b[K")
            self._bar_visible = False
        self._write(safe_text(text) + "\n")  # event messages carry file names: never raw escapes

    line = note

    def draw(self, force: bool = False) -> None:
        if not self.state.counts.get("step"):
            return
        now = time.monotonic()
        last = self.state.max_steps and self.state.step >= self.state.max_steps
        if not force and not last and now - self._drawn_at < self.min_interval:
            return
        if not self.tty and self._drawn_step == self.state.step:
            return
        self._drawn_at, self._drawn_step = now, self.state.step
        if self.tty:
            cols = shutil.get_terminal_size((120, 24)).columns
            text = progress_line(self.state)
            if len(text) >= cols:  # narrow terminal: shrink the bar before cutting the numbers
                text = progress_line(self.state, width=max(3, 20 - (len(text) - cols + 1)))
            self._write("\r" + text[: max(20, cols - 1)] + "\x1b[K")
            self._bar_visible = True
        else:
            self._write(plain_progress(self.state) + "\n")

    def live(self, event) -> None:
        """One new event (typed, or a dict from events.jsonl)."""
        event = ev.as_event(event)
        if event is None:
            return
        before = RunState(best_step=self.state.best_step, auto_stop=self.state.auto_stop)  # what was said so far
        if not self.state.apply(event):
            return
        if isinstance(event, ev.Step):
            self.draw()
        elif (text := describe_event(event, self.run_dir, before)) is not None:
            self.note(text)
            if self.tty:
                self.draw(force=True)

    __call__ = live

    def replay(self, events) -> None:
        """History: a count, then every event line except repeated checkpoints/previews/validations (the last of each
        is shown), then the progress as it stands."""
        typed = ev.parse_all(events)
        if not typed:
            return
        self.state.apply_all(typed)
        last_of = {}
        for i, event in enumerate(typed):
            if isinstance(event, (ev.Checkpoint, ev.Preview, ev.Validation)):
                last_of[event.TYPE] = i
        counts = self.state.counts
        self.note(f"history: {len(self.state.losses)} steps"
                  + "".join(f", {counts[k]} {k}s" for k in last_of if counts.get(k)))
        said = RunState(auto_stop=self.state.auto_stop)  # the history's validation lines: the rule only if it is on
        for i, event in enumerate(typed):
            if event.TYPE in last_of and last_of[event.TYPE] != i:
                continue
            if (text := describe_event(event, self.run_dir, said)) is not None:
                self.note(text)
        self.draw(force=True)

    def end(self) -> None:
        self.draw(force=True)
        if self._bar_visible:
            self._write("\n")
            self._bar_visible = False
