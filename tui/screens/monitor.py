"""The training monitor, attachable to any run: header, loss plot, the quality line (auto-stop rule, held-out loss,
suggested best step), latest preview ("rendering preview…" while the worker renders one), checkpoints (selecting one
shows its preview), warnings, and a details panel (i) with each checkpoint's vector norms and nearest tokens. Keys
while it runs: stop (confirm; saves), save now, preview now, detach (the run goes on; prints how to come back). Once
it is over the footer offers only what still works: resume (r, in a worker) and finish (f) for a stopped run, finish
for a finished one, quit.

Nothing here reads a file on the UI thread: a short thread worker, started every REDRAW_SECONDS, reads what was
appended to events.jsonl (and, every LIVENESS_EVERY polls, whether the worker lives) and posts typed messages
(`tui/messages.py`). The first poll folds the whole history into a RunView off the UI thread and hands it over; later
polls post parsed events, which the handlers fold (microseconds each). Redraws happen at most REDRAW_SECONDS apart:
the tick copies the view's version into the `shown_version` reactive, whose watcher brings the widgets up to the view;
what each widget shows is a reactive too (the header's figures, the plot's points, the checkpoint rows, the texts), so
only what changed is redrawn."""

from __future__ import annotations

import gc
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Label, OptionList, Static
from textual.widgets.option_list import Option

from core.runs.run_events import RunPhase
from core.runs import api as runapi
from tui.messages import RunEventsArrived, RunFollowFailed, RunHistoryLoaded, RunLiveness
from tui.monitor_text import (checkpoint_label, details_text, empty_plot_text, escape_markup, marks_legend,
                               norm_too_big, quality_line)
from tui.run_view import TERMINAL_STATES, RunView
from tui.screens.base import NarrowFooter, error_text, show_message
from tui.screens.dialogs import ConfirmModal
from tui import web_links
from tui.widgets.image_preview import ImagePreview
from tui.widgets.loss_plot import LossPlot, Series
from tui.widgets.run_header import RunHeader
from tui.workers import OneAtATime, WorkerResults

REDRAW_SECONDS = 0.25  # 4 Hz at most
LIVENESS_EVERY = 8  # polls between checks that the worker still lives (every 2 s)
HISTORY_CHUNK = 4 << 20  # bytes of events.jsonl folded per step of the first load


class MonitorScreen(WorkerResults, Screen):
    DEFAULT_CSS = """
    #mon-body { height: 1fr; }
    #mon-left { width: 1fr; }
    #mon-warnings { height: auto; max-height: 4; display: none; }
    #mon-quality { height: auto; max-height: 2; display: none; }
    #mon-details { height: 1fr; display: none; overflow-y: auto; }
    #mon-right { width: 40%; min-width: 24; padding-left: 1; border-left: solid $primary; }
    #mon-preview { height: 1fr; min-height: 4; }
    #mon-checkpoints { height: 7; }
    #mon-marks { height: 1; display: none; }
    """
    # Which are offered depends on the phase (check_action): a run that is over can no longer stop, save or preview.
    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("v", "save", "Save now"),
        Binding("p", "preview", "Preview now"),
        Binding("d", "detach", "Detach"),
        Binding("r", "resume", "Resume"),
        Binding("f", "finish", "Finish"),
        Binding("i", "details", "Details"),
        Binding("o", "previews_page", "Full size"),  # the previews page (tui/web_links.py)
        Binding("l", "latest", "Latest preview", show=False),
        Binding("escape", "leave", "Start screen", show=False),
        Binding("q", "detach", "Detach", show=False),
        Binding("q", "quit_monitor", "Quit", show=False),  # the app shows ^q Quit
    ]

    # The run as folded so far. It changes in place (events fold into it): assigning it (a history load) or
    # mutate_reactive (a resume) redraws at once; the tick redraws after plain folds, through `shown_version`.
    view: var[RunView] = var(None, always_update=True, init=False)
    shown_version: var[int] = var(-1, init=False)  # the view version the widgets show
    phase: var[RunPhase | None] = var(None, init=False, bindings=True)  # the footer offers only what works in it
    checkpoint_rows: var[tuple] = var((), init=False)  # (step, has preview, best, norm too big) per checkpoint
    pinned_step: var[int | None] = var(None, init=False)  # a checkpoint the user picked; None = the latest preview
    detail_step: var[int | None] = var(None, init=False)  # the checkpoint the details describe; None = the latest
    details_shown: var[bool] = var(False, init=False)  # the details panel instead of the loss plot (i)
    quality: var[str] = var("", init=False)  # the quality line (markup)
    problems: var[str] = var("", init=False)  # the error and the last warnings (markup)
    details: var[str] = var("", init=False)  # the details panel (markup), kept current while it is shown
    preview_label: var[str] = var("no preview yet", init=False)

    def __init__(self) -> None:
        super().__init__()
        self.run_dir = Path(self.app.state.run_dir).absolute()  # the poll threads must not depend on the cwd
        self.set_reactive(MonitorScreen.view, RunView(self.run_dir))  # nothing to draw into yet
        self.follower = None
        self.loaded = False  # the history has been folded and handed over
        self.polls = 0
        self._start_poll = OneAtATime(self._poll)  # the previous poll may still read a long history
        self._shown_tail: tuple | None = None
        self.resuming = OneAtATime(self._resume)
        self._generation = 0  # bumped by a resume: a liveness read from before it no longer holds

    def compose(self) -> ComposeResult:
        yield RunHeader(self.view, id="mon-header")
        with Horizontal(id="mon-body"):
            with Vertical(id="mon-left"):
                yield LossPlot(id="mon-plot")
                yield Static("", id="mon-details")
                yield Static("", id="mon-quality")
                yield Static("", id="mon-warnings")
            with Vertical(id="mon-right"):
                yield Label("no preview yet", id="mon-preview-label")
                yield ImagePreview(id="mon-preview", placeholder="previews appear here")
                yield Label("Checkpoints (Enter: show)", classes="section", id="mon-ckpt-label")
                yield OptionList(id="mon-checkpoints")
                yield Static("", id="mon-marks", classes="hint")
        yield Static("", id="message", classes="message")
        yield NarrowFooter()

    def on_mount(self) -> None:
        self._start_poll()
        self.set_interval(REDRAW_SECONDS, self._tick)

    def show_message(self, text: str, kind: str = "error") -> None:
        show_message(self, text, kind)

    # --- following (thread worker) -----------------------------------------------------------------------------

    def _tick(self) -> None:
        self._start_poll()
        self.shown_version = self.view.version  # watch_shown_version redraws when it changed

    @work(thread=True, group="monitor-follow", exit_on_error=False)
    def _poll(self) -> None:
        """Off the UI thread: read what is new and post it. Polls never overlap, so the follower is used by one
        thread at a time."""
        generation = self._generation
        try:
            if self.follower is None:
                self.follower = runapi.follow(self.run_dir)
                self.follower.max_bytes = HISTORY_CHUNK
            if not self.loaded:
                view = RunView(self.run_dir)
                collecting = gc.isenabled()
                gc.disable()  # building 100k+ objects would trigger full collections that pause the UI thread too
                try:
                    while events := self.follower.poll_events():  # the whole history, folded here
                        view.apply_all(events)
                    series = (Series(), Series(), Series())  # and the plot's arrays filled here too
                    for target, points in zip(series, (view.losses, view.smoothed, view.val_losses)):
                        target.sync(points)
                finally:
                    if collecting:
                        gc.enable()
                self.loaded = True
                self.post_message(RunHistoryLoaded(view, series))
                events = []
            else:
                events = self.follower.poll_events()
                if events:
                    self.post_message(RunEventsArrived(events))
            self.polls += 1
            if getattr(self.app, "check_liveness", True) and self.polls % LIVENESS_EVERY == 1 and not events:
                info = self.follower.info()
                message = RunLiveness(info.state, info.reason)
                message.generation = generation
                self.post_message(message)
        except Exception as exc:  # noqa: BLE001 - shown, never a crash of the UI
            self.post_message(RunFollowFailed(error_text(exc)))

    def on_run_history_loaded(self, message: RunHistoryLoaded) -> None:
        if message.series is not None:
            self.query_one(LossPlot).points = message.series  # filled in the worker: adopted as they are
        self.view = message.view  # watch_view redraws
        # A long history is hundreds of thousands of objects that live as long as the screen: keep the cyclic
        # garbage collector from walking them all again in a full collection (a 50-100 ms pause mid-follow).
        gc.freeze()

    def on_run_events_arrived(self, message: RunEventsArrived) -> None:
        self.view.apply_all(message.events)  # drawn by the next tick

    def on_run_liveness(self, message: RunLiveness) -> None:
        if getattr(message, "generation", self._generation) != self._generation:
            return  # read before a resume: the old life's "stopped" would undo it
        if message.phase.active and self.view.state in TERMINAL_STATES:
            self.view.resume_requested()  # resumed elsewhere (Start's r, `tiwiz resume`): not the old life's end
            self.mutate_reactive(MonitorScreen.view)
            return
        self.view.set_liveness(message.phase, message.reason)

    def on_run_follow_failed(self, message: RunFollowFailed) -> None:
        self.show_message(message.message)

    # --- drawing -----------------------------------------------------------------------------------------------

    def watch_view(self) -> None:
        self.redraw()

    def watch_shown_version(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        """Bring the reactives up to the view; each widget is touched only when what it shows changed (a text update
        or an option list rebuild re-lays-out the screen, which at 4 Hz would cost more than everything else)."""
        view = self.view
        self.set_reactive(MonitorScreen.shown_version, view.version)  # drawn now: the tick need not again
        self.query_one(RunHeader).show(view)
        plot = self.query_one(LossPlot)
        plot.points = (view.losses, view.smoothed, view.val_losses)
        plot.empty_text = empty_plot_text(view)
        self.quality = quality_line(view)
        if self.details_shown:
            self.details = details_text(view, self.detail_step)
        lines = [f"[red]error: {escape_markup(view.error)}[/]"] if view.error else []
        lines += [f"[yellow]warning: {escape_markup(w)}[/]" for w in view.warnings[-3:]]
        self.problems = "\n".join(lines)
        # also when a preview arrives after its checkpoint: the marker must show
        self.checkpoint_rows = tuple((c.step, bool(c.preview), c.best or c.step == view.best_step,
                                      norm_too_big(c.norms, view.vocab_median_norm)) for c in view.checkpoints)
        self._show_preview()
        self.phase = view.state

    def watch_phase(self, phase: RunPhase) -> None:
        if phase in TERMINAL_STATES:
            tail = {RunPhase.FINISHED: "Finished. f: where the files are and how to use them.",
                    RunPhase.STOPPED: "Stopped and saved. r resumes it; f: where the files are.",
                    RunPhase.FAILED: "The run failed; see the error above and worker.log in the run folder.",
                    RunPhase.KILLED: "The worker was killed. r resumes it from its last checkpoint."}
            message = (tail[phase], "ok" if phase == RunPhase.FINISHED else "warning")
            if message != self._shown_tail:
                self._shown_tail = message
                self.show_message(*message)
        elif self._shown_tail is not None:  # resumed: the "Stopped and saved" line no longer holds
            self._shown_tail = None
            self.show_message("")

    def watch_quality(self, text: str) -> None:
        widget = self.query_one("#mon-quality", Static)
        widget.update(text)
        widget.display = bool(text) and not self.details_shown

    def watch_problems(self, text: str) -> None:
        widget = self.query_one("#mon-warnings", Static)
        widget.update(text)
        widget.display = bool(text)
        widget.styles.max_height = 12 if self.view.error else 4  # a failed run's error is shown whole

    def watch_details(self, text: str) -> None:
        self.query_one("#mon-details", Static).update(text)

    def watch_preview_label(self, text: str) -> None:
        self.query_one("#mon-preview-label", Label).update(text)

    def watch_details_shown(self, shown: bool) -> None:
        """Swap the loss plot for the checkpoint details (norms, nearest tokens, the quality figures) and back."""
        if shown:
            self.details = details_text(self.view, self.detail_step)
        self.query_one("#mon-details").display = shown
        self.query_one(LossPlot).display = not shown
        self.query_one("#mon-quality").display = bool(self.quality) and not shown

    def watch_detail_step(self, step: int | None) -> None:
        if self.details_shown:
            self.details = details_text(self.view, step)

    def watch_pinned_step(self) -> None:
        self._show_preview()

    def watch_checkpoint_rows(self, old: tuple, rows: tuple) -> None:
        """Append the new rows and re-label the changed ones; rebuild only when rows went away (a resume)."""
        menu = self.query_one("#mon-checkpoints", OptionList)

        legend = self.query_one("#mon-marks", Static)
        legend.update(marks_legend(rows))
        legend.display = bool(rows)
        label = checkpoint_label
        if len(rows) >= len(old) and [r[0] for r in rows[: len(old)]] == [r[0] for r in old]:
            for i, (before, now) in enumerate(zip(old, rows)):
                if before != now:
                    menu.replace_option_prompt_at_index(i, label(*now))
            if len(rows) > len(old):
                menu.add_options([Option(label(*row), id=str(row[0])) for row in rows[len(old):]])
            return
        highlighted = menu.highlighted
        menu.clear_options()
        menu.add_options([Option(label(*row), id=str(row[0])) for row in rows])
        if highlighted is not None and highlighted < menu.option_count:
            menu.highlighted = highlighted

    def _show_preview(self) -> None:
        preview = self.query_one("#mon-preview", ImagePreview)
        if self.pinned_step is not None and self.pinned_step in self.view.previews:
            step, rel = self.pinned_step, self.view.previews[self.pinned_step]
            self.preview_label = f"{'' if self.narrow else 'checkpoint '}step {step} (l: latest)"
        elif self.view.latest_preview is not None:
            step, rel = self.view.latest_preview
            self.preview_label = self._rendering_text() or f"{'' if self.narrow else 'latest '}preview: step {step}"
        else:
            self.preview_label = self._rendering_text() or "no preview yet"
            return
        preview.path = self.view.resolve(rel)

    def _rendering_text(self) -> str:
        step = self.view.rendering_preview
        if step is None or not self.view.state.active:
            return ""
        return f"rendering step {step}…" if self.narrow else f"rendering preview (step {step})…"

    narrow = False  # below 80 columns: the right column's labels in fewer words

    def on_resize(self, event) -> None:
        narrow = event.size.width < 80
        if narrow != self.narrow:
            self.narrow = narrow
            self.query_one("#mon-ckpt-label", Label).update("Checkpoints (Enter)" if narrow
                                                             else "Checkpoints (Enter: show)")
            self._show_preview()

    @on(OptionList.OptionHighlighted, "#mon-checkpoints")
    @on(OptionList.OptionSelected, "#mon-checkpoints")
    def _checkpoint(self, event) -> None:
        step = int(event.option.id)
        self.detail_step = step
        if step in self.view.previews:
            self.pinned_step = step
        else:
            self.show_message(f"No preview was rendered at step {step}.", "info")

    def action_latest(self) -> None:
        self.pinned_step = self.detail_step = None

    def action_previews_page(self) -> None:
        web_links.open_previews(self.app, self.run_dir)

    def action_details(self) -> None:
        self.details_shown = not self.details_shown

    # --- commands ----------------------------------------------------------------------------------------------

    def _send(self, command: str, done: str) -> None:
        if self.view.state in TERMINAL_STATES:
            self.show_message(f"The run is {self.view.state}; there is nothing to {command}.", "info")
            return
        self._send_command(command, done)

    @work(thread=True, group="monitor-command", exit_on_error=False)
    def _send_command(self, command: str, done: str) -> str:
        """Drop the command file off the UI thread (a slow or full disk must not freeze the screen)."""
        runapi.send_command(self.run_dir, command)
        return done

    def _send_command_done(self, done: str) -> None:
        self.show_message(done, "info")

    def action_stop(self) -> None:
        if self.view.state in TERMINAL_STATES:
            self.show_message(f"The run is already {self.view.state}.", "info")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._send("stop", "Stopping: the worker saves the embedding and its state, then exits.")

        self.app.push_screen(ConfirmModal("Stop training?", "The current step finishes, the embedding and the "
                                                            "resume state are saved. You can resume later."),
                             answered)

    def action_save(self) -> None:
        self._send("save", "Asked the worker to save a checkpoint after this step.")

    def action_preview(self) -> None:
        self._send("preview", "Asked the worker to render a preview after this step.")

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """The footer (and the keys) offer only what still works in the run's phase."""
        state = self.view.state
        if action in ("stop", "save", "preview", "detach"):
            return state.active
        if action == "resume":
            return state in (RunPhase.STOPPED, RunPhase.KILLED) and not self.resuming.busy
        if action == "finish":
            return state in (RunPhase.FINISHED, RunPhase.STOPPED)
        if action == "quit_monitor":
            return not state.active
        return True

    def action_detach(self) -> None:
        if self.view.state in TERMINAL_STATES:
            self.app.exit()
            return
        self.app.detach(self.run_dir)

    @property
    def training_run(self) -> Path | None:
        """The run folder while its worker is (still believed to be) training, else None (ctrl+q then just quits)."""
        return self.run_dir if self.view.state.active else None

    def action_quit_monitor(self) -> None:
        self.app.exit()

    def action_resume(self) -> None:
        if self.resuming.busy:
            return
        self.show_message("Resuming: starting the worker…", "info")
        self.resuming()
        self.refresh_bindings()

    @work(thread=True, group="monitor-resume", exit_on_error=False)
    def _resume(self) -> None:
        """Spawn the worker off the UI thread (it reads the config and the checkpoint, then starts a process)."""
        runapi.resume_run(self.run_dir)

    def _resume_done(self, _result) -> None:
        self._generation += 1
        self.view.resume_requested()
        self.mutate_reactive(MonitorScreen.view)  # changed in place: redrawn now
        self.show_message("Resumed: the worker continues from the last checkpoint.", "ok")

    def worker_failed(self, worker, error) -> None:
        super().worker_failed(worker, error)
        self.refresh_bindings()  # r is offered again after a refused resume

    def action_finish(self) -> None:
        if self.view.state not in (RunPhase.FINISHED, RunPhase.STOPPED):
            self.show_message("The run has not finished yet.", "info")
            return
        self.app.goto("finish")

    def action_leave(self) -> None:
        self.app.goto("start")
