"""Start: a new embedding, continue where you left off, the demo, or a run found on disk (attach or resume), and the
queue: its jobs, live (a worker re-reads the queue folder every QUEUE_POLL_S), started (s, as `tiwiz queue run`) and
stopped gracefully (x, as `tiwiz queue stop`) from here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.reactive import var
from textual.widgets import DataTable, Label, OptionList, Static
from textual.widgets.option_list import Option

from core.runs import api as runapi
from tui.messages import QueueRead
from tui.screens.base import WizardScreen, error_text
from tui.screens.dialogs import ConfirmModal
from tui.state import STAGE_TITLES, WizardState

QUEUE_POLL_S = 2.0  # how often the queue panel re-reads the queue folder


def _now() -> float:
    import time

    return time.time()


def run_age(path: Path) -> str:
    """How long ago the run last wrote its status: "5 min", "3 h", "2 d"."""
    try:
        seconds = _now() - (Path(path) / "status.json").stat().st_mtime
    except OSError:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return "now"


@dataclass(frozen=True)
class QueueRow:
    key: str  # the run folder (or the job's name before it has one)
    name: str
    state: str
    gpu: str
    step: str
    started: bool  # its run folder exists: something to attach to


@dataclass(frozen=True)
class QueueStatus:
    """What the queue panel shows; equal when nothing shown changed (so a poll that finds no change redraws
    nothing)."""

    rows: tuple[QueueRow, ...] = ()
    alive: bool = False  # a scheduler holds the queue's lock
    stopping: bool = False  # and it was asked to stop
    running: int = 0  # jobs running now

    @property
    def label(self) -> str:
        if self.stopping:
            return "Queue: stopping (running jobs save, then the scheduler exits)"
        if self.alive:
            return "Queue: running (x stops it; Enter attaches to a job's run)"
        return "Queue (s runs it; Enter attaches to a job's run)"


def read_queue(queue_dir: Path) -> QueueStatus:
    """The queue folder's jobs and scheduler (reads files: call it from a worker)."""
    from core.queue.scheduler import read_scheduler, scheduler_alive
    from core.queue.status import job_rows

    alive = scheduler_alive(queue_dir)
    sched = read_scheduler(queue_dir) if alive else {}
    rows = job_rows(queue_dir, (sched.get("settings") or {}).get("retries"))
    shown = tuple(QueueRow(key=row.run_dir or row.name, name=row.name, state=row.state, gpu=row.gpu or "-",
                           step=f"{row.step}/{row.max_steps}" if row.max_steps else "-", started=row.started)
                  for row in rows)
    running = sum(row.state.split()[0] in ("starting", "running", "stopping") for row in rows)
    return QueueStatus(rows=shown, alive=alive, stopping=alive and sched.get("state") == "stopping",
                       running=running)


class StartScreen(WizardScreen):
    STAGE = "start"
    DEFAULT_CSS = """
    #start-body { padding: 0 2; }
    #start-menu { height: auto; max-height: 8; }
    #runs { height: 1fr; }
    """
    BINDINGS = [
        Binding("n", "new", "New"),
        Binding("c", "continue", "Continue", show=False),
        Binding("d", "demo", "Demo"),
        Binding("a", "attach", "Attach run"),
        Binding("r", "resume", "Resume run"),
        Binding("s", "queue_start", "Run queue"),  # offered while the queue has jobs and no scheduler runs it
        Binding("x", "queue_stop", "Stop queue"),  # offered while a scheduler or a job runs
        Binding("escape", "back", "Back", show=False),
        Binding("ctrl+n", "next", "Next", show=False),
    ]

    # the runs found on disk: ((RunInfo, age), ...), newest first; None until the first read
    found_runs: var[tuple | None] = var(None, init=False)
    queue: var[QueueStatus | None] = var(None, init=False, bindings=True)  # None until the first read

    def compose_body(self) -> ComposeResult:
        with Vertical(id="start-body"):
            yield Static("Train a textual-inversion embedding for Stable Diffusion.", classes="lead")
            yield OptionList(id="start-menu")
            yield Label("Runs on disk", classes="section")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield Static("", id="runs-detail", classes="hint", markup=False)
            yield Static("", id="runs-empty", classes="hint")
            yield Label(QueueStatus().label, id="queue-label", classes="section")
            yield DataTable(id="queue", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        menu = self.query_one("#start-menu", OptionList)
        menu.add_option(Option("New embedding", id="new"))
        saved = self.app.saved_state
        if saved is not None and saved.has_progress():
            what = saved.name or Path(saved.dataset or saved.source or saved.model).name
            menu.add_option(Option(f"Continue: {STAGE_TITLES.get(saved.stage, saved.stage)}"
                                   f"{' (' + what + ')' if what else ''}", id="continue"))
        menu.add_option(Option("Demo: the tiny model and sample images", id="demo"))
        menu.add_option(Option("Quit", id="quit"))
        menu.highlighted = 0  # Enter works at once
        menu.focus()
        table = self.query_one("#runs", DataTable)
        for label, width in (("Run", 26), ("State", 10), ("Step", 11), ("Loss", 7), ("Age", 9)):
            table.add_column(label, width=width)
        queue = self.query_one("#queue", DataTable)
        for label, width in (("Job", 28), ("State", 16), ("GPU", 8), ("Step", 12)):
            queue.add_column(label, width=width)
        queue.display = self.query_one("#queue-label").display = False  # shown once jobs are found
        self.queue_dir = self._queue_dir()
        self._queue_poll = None  # the queue read in flight, if any
        self._queue_command = None  # the start or stop in flight, if any
        self.load_runs()
        self.poll_queue()
        self.set_interval(QUEUE_POLL_S, self.poll_queue)

    def _queue_dir(self) -> Path:
        from core.queue.jobs import default_queue_dir

        return default_queue_dir(self.app.runs_root).absolute()  # the workers must not depend on the cwd

    # --- runs on disk ------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def load_runs(self) -> None:
        runs = runapi.list_runs(self.app.runs_root)
        found = tuple((run, run_age(run.path)) for run in runs)
        self.app.call_from_thread(setattr, self, "found_runs", found)

    def watch_found_runs(self, found: tuple) -> None:
        from rich.text import Text

        table = self.query_one("#runs", DataTable)
        table.clear()
        for run, age in found:
            loss = "" if run.loss is None else f"{run.loss:.4f}"
            step = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            table.add_row(Text(run.name), str(run.state), step, loss, age, key=str(run.path))
        if found:
            self._show_run_detail(str(found[0][0].path))
        self.query_one("#runs-empty", Static).update(
            "" if found else "No runs yet. They appear here while training and after it, ready to attach or resume."
        )
        table.display = bool(found)

    def _run(self, key: str) -> runapi.RunInfo | None:
        return next((run for run, _ in self.found_runs or () if str(run.path) == key), None)

    # --- the queue ---------------------------------------------------------------------------------------------

    def poll_queue(self) -> None:
        if self._queue_poll is not None and not self._queue_poll.is_finished:
            return  # the last read is still going (a slow disk): never two at once
        self._queue_poll = self._read_queue()

    @work(thread=True, group="queue", exit_on_error=False)
    def _read_queue(self) -> None:
        try:
            status = read_queue(self.queue_dir)
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable queue folder: said; the next poll tries again
            self.app.call_from_thread(self.show_message, f"Cannot read the queue: {error_text(exc)}")
            return
        self.post_message(QueueRead(status))

    def on_queue_read(self, message: QueueRead) -> None:
        self.queue = message.status  # equal to the last one: nothing is redrawn

    def watch_queue(self, old: QueueStatus | None, status: QueueStatus) -> None:
        table = self.query_one("#queue", DataTable)
        label = self.query_one("#queue-label", Label)
        if old is None or old.label != status.label:
            label.update(status.label)
        if old is None or old.rows != status.rows:
            cursor = table.cursor_row
            table.clear()
            for row in status.rows:
                table.add_row(row.name, row.state, row.gpu, row.step, key=row.key)
            if status.rows:
                table.move_cursor(row=min(cursor, len(status.rows) - 1), animate=False)
        table.display = label.display = bool(status.rows)

    @on(DataTable.RowSelected, "#queue")
    def _job_selected(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        row = next((r for r in (self.queue.rows if self.queue else ()) if r.key == key), None)
        if row is None or not row.started:
            self.show_message("That job has not started yet: s runs the queue.", "info")
            return
        self.app.state.run_dir = key
        self.app.goto("monitor")

    def _queue_busy(self) -> bool:
        return self._queue_command is not None and not self._queue_command.is_finished

    def action_queue_start(self) -> None:
        if self._queue_busy():
            self.show_message("Already starting or stopping the queue…", "info")
            return
        self.show_message("Starting the queue's scheduler…", "info")
        self._queue_command = self._start_queue()

    @work(thread=True, group="queue-command", exit_on_error=False)
    def _start_queue(self) -> None:
        """`tiwiz queue run` with the previous run's settings: the same detached scheduler (core.queue.launch)."""
        from core.queue import launch
        from core.queue.scheduler import read_scheduler

        try:
            jobs = launch.check_startable(self.queue_dir)
            if not any(job.state in ("queued", "running", "stopped") for job in jobs):
                message = ("Nothing to run: every job in the queue is finished or failed (`tiwiz queue retry JOB` "
                           "queues one again).", "info")
            else:
                settings = launch.scheduler_settings(read_scheduler(self.queue_dir).get("settings") or {})
                sched, jobs = launch.start_detached(self.queue_dir, settings)
                message = (f"Queue running (scheduler pid {sched.get('pid')}, {sched.get('backend')}). x stops it.",
                           "ok")
        except Exception as exc:  # noqa: BLE001 - e.g. already running, or it could not start: said, never a crash
            message = (error_text(exc), "error")
        self.app.call_from_thread(self.show_message, *message)
        self.app.call_from_thread(self.poll_queue)

    def action_queue_stop(self) -> None:
        if self._queue_busy():
            self.show_message("Already starting or stopping the queue…", "info")
            return
        status = self.queue or QueueStatus()
        if not status.alive and not status.running:
            self.show_message("Nothing to stop: no scheduler runs the queue and no job is running.", "info")
            return
        if not status.running:
            self._queue_command = self._stop_queue()
            return

        def answered(yes: bool | None) -> None:
            if yes and not self._queue_busy():
                self._queue_command = self._stop_queue()

        jobs = f"{status.running} running job{'s' * (status.running != 1)}"
        self.app.push_screen(ConfirmModal("Stop the queue?", f"The {jobs} save and stop; no new job starts. s runs "
                                                             "the queue again from their checkpoints."), answered)

    @work(thread=True, group="queue-command", exit_on_error=False)
    def _stop_queue(self) -> None:
        """`tiwiz queue stop`, without waiting: the panel shows the jobs stopping."""
        from core.queue.launch import stop_queue

        try:
            asked = stop_queue(self.queue_dir)
        except Exception as exc:  # noqa: BLE001 - said, never a crash
            self.app.call_from_thread(self.show_message, error_text(exc))
        else:
            text = ("Stopping the queue: running jobs save and stop, no new job starts." if asked is None else
                    f"No scheduler is running; asked {asked} running job{'s' * (asked != 1)} to save and stop.")
            self.app.call_from_thread(self.show_message, text, "info")
        self.app.call_from_thread(self.poll_queue)

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """The footer offers the queue's keys only while they can do something."""
        status = self.queue
        if action == "queue_start":
            return bool(status and status.rows and not status.alive)
        if action == "queue_stop":
            return bool(status and (status.alive or status.running))
        return True

    @on(OptionList.OptionSelected, "#start-menu")
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        action = {"new": self.action_new, "continue": self.action_continue, "demo": self.action_demo,
                  "quit": self.app.exit}[event.option.id]
        action()

    def action_new(self) -> None:
        self.app.state = WizardState()
        self.app.goto("model")

    def action_continue(self) -> None:
        saved = self.app.saved_state
        if saved is None or not saved.has_progress():
            self.show_message("There is nothing to continue.", "info")
            return
        self.app.state = saved
        self.app.goto(saved.stage if saved.stage != "start" else "model")

    def action_demo(self) -> None:
        self.show_message("Preparing the demo: the tiny model and sample images… (Esc cancels)", "info")
        self.prepare_demo()

    def demo_running(self) -> bool:
        return any(w.node is self and w.group == "demo" and not w.is_finished for w in self.workers)

    @work(exclusive=True, group="demo", exit_on_error=False)
    async def prepare_demo(self) -> None:
        from tui.demo_state import prepare_demo_state

        state = await prepare_demo_state()
        self.app.state = state
        self.app.goto("captions" if state.skip_preprocess else "folders")

    def _selected_run(self) -> Path | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            self.show_message("No run to pick: start a new embedding or the demo.", "info")
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return Path(key)

    def action_attach(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        self.app.state.run_dir = str(run)
        self.app.goto("monitor")

    def action_resume(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        try:
            runapi.resume_run(run)
        except Exception as exc:  # a finished or live run cannot be resumed: say why
            self.show_message(error_text(exc))
            return
        self.app.state.run_dir = str(run)
        self.app.goto("monitor")

    @on(DataTable.RowSelected, "#runs")
    def _run_selected(self, event: DataTable.RowSelected) -> None:
        self.action_attach()

    @on(DataTable.RowHighlighted, "#runs")
    def _run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_run_detail(str(event.row_key.value))

    def _show_run_detail(self, key: str) -> None:
        """The highlighted run's folder and what its state means (two runs of one name differ here)."""
        run = self._run(key)
        if run is None:
            return
        detail = f"{run.path}"
        if run.description:
            detail += f"\n{run.description}"
        self.query_one("#runs-detail", Static).update(detail)

    def action_back(self) -> None:
        if self.demo_running():  # Esc cancels the demo; cancelling the worker kills its helper process
            self.workers.cancel_group(self, "demo")
            self.show_message("Demo cancelled.", "info")

    def action_next(self) -> None:
        self.action_new()
