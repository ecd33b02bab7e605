"""The training monitor, attachable to any run: header, loss plot, latest preview, checkpoints (selecting one shows
its preview), warnings. It follows the run folder through core.runs.api and redraws at most 4 times a second.
Keys: stop (confirm; saves), save now, preview now, detach (the run goes on; prints how to come back)."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui import runs_info
from tui.run_view import TERMINAL_STATES, RunView
from tui.screens.base import error_text, show_message
from tui.screens.dialogs import ConfirmModal
from tui.widgets.image_preview import ImagePreview
from tui.widgets.loss_plot import LossPlot
from tui.widgets.run_header import RunHeader

REDRAW_SECONDS = 0.25  # 4 Hz at most
LIVENESS_EVERY = 8  # polls between checks that the worker still lives (every 2 s)


class MonitorScreen(Screen):
    BINDINGS = [
        Binding("s", "stop", "Stop"),
        Binding("v", "save", "Save now"),
        Binding("p", "preview", "Preview now"),
        Binding("d", "detach", "Detach"),
        Binding("f", "finish", "Finish"),
        Binding("l", "latest", "Latest preview", show=False),
        Binding("escape", "leave", "Start screen", show=False),
        Binding("q", "detach", "Detach", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.run_dir = Path(self.app.state.run_dir)
        self.view = RunView(self.run_dir)
        self.follower = None
        self.shown_version = -1
        self.pinned_step: int | None = None  # a checkpoint the user picked; None = follow the latest preview

    def compose(self) -> ComposeResult:
        yield RunHeader(self.view, id="mon-header")
        with Horizontal(id="mon-body"):
            with Vertical(id="mon-left"):
                yield LossPlot(id="mon-plot")
                yield Static("", id="mon-warnings")
            with Vertical(id="mon-right"):
                yield Label("no preview yet", id="mon-preview-label")
                yield ImagePreview(id="mon-preview", placeholder="previews appear here")
                yield Label("Checkpoints (Enter: show)", classes="section")
                yield OptionList(id="mon-checkpoints")
        yield Static("", id="message", classes="message")
        yield Footer()

    def on_mount(self) -> None:
        try:
            self.follower = runs_info.follow(self.run_dir)
        except Exception as exc:
            self.show_message(error_text(exc))
        self.polls = 0
        self.poll()
        self.set_interval(REDRAW_SECONDS, self.poll)

    def show_message(self, text: str, kind: str = "error") -> None:
        show_message(self, text, kind)

    # --- following ---------------------------------------------------------------------------------------------

    def poll(self) -> None:
        if self.follower is None:
            return
        try:
            events = self.follower.poll()
        except Exception as exc:
            self.show_message(error_text(exc))
            return
        if events:
            self.view.apply_all(events)
        self.polls += 1
        if getattr(self.app, "check_liveness", True) and (self.polls % LIVENESS_EVERY == 1) and not events:
            try:
                info = self.follower.info()
                self.view.set_liveness(info.state, info.reason)
            except Exception:
                pass
        if self.view.version != self.shown_version:
            self.shown_version = self.view.version
            self.redraw()

    def redraw(self) -> None:
        view = self.view
        self.query_one(RunHeader).refresh()
        self.query_one(LossPlot).update_series(view.losses, view.smoothed, view.val_losses)
        warnings = self.query_one("#mon-warnings", Static)
        lines = [f"[red]error: {view.error}[/]"] if view.error else []
        lines += [f"[yellow]warning: {w}[/]" for w in view.warnings[-3:]]
        warnings.update("\n".join(lines))
        warnings.display = bool(lines)
        menu = self.query_one("#mon-checkpoints", OptionList)
        if menu.option_count != len(view.checkpoints):
            highlighted = menu.highlighted
            menu.clear_options()
            for c in view.checkpoints:
                menu.add_option(Option(f"step {c.step:>6}{'  ▣' if c.preview else ''}", id=str(c.step)))
            if highlighted is not None and highlighted < menu.option_count:
                menu.highlighted = highlighted
        self._show_preview()
        if view.state in TERMINAL_STATES:
            tail = {"finished": "Finished. f: where the files are and how to use them.",
                    "stopped": "Stopped and saved. Resume it from the start screen.",
                    "failed": "The run failed; see the error above and worker.log in the run folder.",
                    "killed": "The worker was killed. Escape, then r on the start screen resumes it."}[view.state]
            self.show_message(tail, "ok" if view.state == "finished" else "warning")

    def _show_preview(self) -> None:
        label = self.query_one("#mon-preview-label", Label)
        preview = self.query_one("#mon-preview", ImagePreview)
        if self.pinned_step is not None and self.pinned_step in self.view.previews:
            step, rel = self.pinned_step, self.view.previews[self.pinned_step]
            label.update(f"checkpoint step {step} (l: latest)")
        elif self.view.latest_preview is not None:
            step, rel = self.view.latest_preview
            label.update(f"latest preview: step {step}")
        else:
            return
        preview.set_image(self.view.resolve(rel))

    @on(OptionList.OptionHighlighted, "#mon-checkpoints")
    @on(OptionList.OptionSelected, "#mon-checkpoints")
    def _checkpoint(self, event) -> None:
        step = int(event.option.id)
        if step in self.view.previews:
            self.pinned_step = step
        else:
            self.show_message(f"No preview was rendered at step {step}.", "info")
        self._show_preview()

    def action_latest(self) -> None:
        self.pinned_step = None
        self._show_preview()

    # --- commands ----------------------------------------------------------------------------------------------

    def _send(self, command: str, done: str) -> None:
        if self.view.state in TERMINAL_STATES:
            self.show_message(f"The run is {self.view.state}; there is nothing to {command}.", "info")
            return
        try:
            runs_info.send_command(self.run_dir, command)
        except Exception as exc:
            self.show_message(error_text(exc))
            return
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

    def action_detach(self) -> None:
        if self.view.state in TERMINAL_STATES:
            self.app.exit()
            return
        self.app.detach(self.run_dir)

    def action_finish(self) -> None:
        if self.view.state != "finished":
            self.show_message("The run has not finished yet.", "info")
            return
        self.app.goto("finish")

    def action_leave(self) -> None:
        self.app.goto("start")
