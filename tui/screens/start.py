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

from core.errors import TiwizError
from core.runs import api as runapi
from core.runs.run_events import RunPhase
from tui.screens.base import WizardScreen, error_text
from tui.screens.dialogs import ConfirmModal
from tui.state import STAGE_TITLES, WizardState
from tui.workers import OneAtATime

QUEUE_POLL_S = 2.0  # how often the queue panel and the list of runs re-read their folders


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


def resume_question(run: runapi.RunInfo) -> tuple[str, str] | None:
    """What `r` asks before it resumes a finished run (which trains on to its step count, replacing its final
    files); None for a run that simply continues (stopped, killed, failed)."""
    if run.state != RunPhase.FINISHED:
        return None
    why = f" ({run.reason})" if run.reason else ""
    since = (f"from its last checkpoint (step {run.last_checkpoint})" if run.last_checkpoint else "from step 0")
    return (f"Train {run.name} on to step {run.max_steps}?",
            f"It finished at step {run.step} of {run.max_steps}{why}. Resuming trains on {since} up to step "
            f"{run.max_steps} with the same settings and replaces its final embedding files. To try a change "
            "instead, start a new embedding.")


def resume_started_text(run: runapi.RunInfo) -> str:
    since = f"step {run.last_checkpoint}" if run.last_checkpoint else "step 0 (no checkpoint was saved)"
    return f"Resuming {run.name} from {since} up to step {run.max_steps}…"


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
        self._add_columns(narrow=self.app.size.width < 80)
        self.query_one("#queue").display = self.query_one("#queue-label").display = False  # shown once jobs are found
        self.queue_dir = self._queue_dir()
        self.poll_runs = OneAtATime(self.load_runs)  # the list is kept current: runs start, step and end meanwhile
        self.poll_queue = OneAtATime(self._read_queue)
        self.queue_command = OneAtATime(self._queue_command)  # a start or a stop of the scheduler
        self.resuming = OneAtATime(self._resume)
        self._poll()
        self.set_interval(QUEUE_POLL_S, self._poll)

    def _poll(self) -> None:
        self.poll_runs()
        self.poll_queue()

    _narrow = False

    def _add_columns(self, narrow: bool) -> None:
        """The tables' columns; below 80 columns narrower ones (and no Age, no GPU), so no column is cut."""
        self._narrow = narrow
        wide = {"runs": (("Run", 26), ("State", 10), ("Step", 11), ("Loss", 7), ("Age", 9)),
                "queue": (("Job", 28), ("State", 16), ("GPU", 8), ("Step", 12))}
        slim = {"runs": (("Run", 17), ("State", 9), ("Step", 9), ("Loss", 6)),
                "queue": (("Job", 21), ("State", 13), ("Step", 9))}
        for table_id, columns in (slim if narrow else wide).items():
            table = self.query_one(f"#{table_id}", DataTable)
            table.clear(columns=True)
            for label, width in columns:
                table.add_column(label, width=width)

    def on_resize(self, event) -> None:
        narrow = event.size.width < 80
        if narrow != self._narrow:
            self._add_columns(narrow)
            if self.found_runs is not None:
                self.watch_found_runs(self.found_runs)
            if self.queue is not None:
                self.watch_queue(None, self.queue)

    def _queue_dir(self) -> Path:
        from core.queue.jobs import default_queue_dir

        return default_queue_dir(self.app.runs_root).absolute()  # the workers must not depend on the cwd

    # --- runs on disk ------------------------------------------------------------------------------------------

    @work(thread=True, group="runs", exit_on_error=False)
    def load_runs(self) -> tuple:
        return tuple((run, run_age(run.path)) for run in runapi.list_runs(self.app.runs_root))

    def load_runs_done(self, found: tuple) -> None:
        if found != self.found_runs:  # a poll that finds no change redraws nothing
            self.found_runs = found

    def watch_found_runs(self, found: tuple) -> None:
        from rich.text import Text

        table = self.query_one("#runs", DataTable)
        keep = self._highlighted_run()
        table.clear()
        for run, age in found:
            loss = "" if run.last_loss is None else f"{run.last_loss:.4f}"
            step = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            cells = (Text(run.name), str(run.state), step, loss, age)
            table.add_row(*cells[: len(table.columns)], key=str(run.path))
        keys = [str(run.path) for run, _ in found]
        if keep in keys:
            table.move_cursor(row=keys.index(keep), animate=False)
        if found:
            self._show_run_detail(keep if keep in keys else keys[0])
        self.query_one("#runs-empty", Static).update(
            "" if found else "No runs yet. They appear here while training and after it, ready to attach or resume."
        )
        table.display = bool(found)

    def _run(self, key: str) -> runapi.RunInfo | None:
        return next((run for run, _ in self.found_runs or () if str(run.path) == key), None)

    # --- the queue ---------------------------------------------------------------------------------------------

    @work(thread=True, group="queue", exit_on_error=False)
    def _read_queue(self) -> QueueStatus:
        try:
            return read_queue(self.queue_dir)
        except Exception as exc:  # e.g. an unreadable queue folder: said; the next poll tries again
            raise TiwizError(f"Cannot read the queue: {error_text(exc)}") from exc

    def _read_queue_done(self, status: QueueStatus) -> None:
        self.queue = status  # equal to the last one: nothing is redrawn

    def watch_queue(self, old: QueueStatus | None, status: QueueStatus) -> None:
        table = self.query_one("#queue", DataTable)
        label = self.query_one("#queue-label", Label)
        if old is None or old.label != status.label:
            label.update(status.label)
        if old is None or old.rows != status.rows:
            cursor = table.cursor_row
            table.clear()
            for row in status.rows:
                cells = (row.name, row.state, row.gpu, row.step) if len(table.columns) == 4 else \
                    (row.name, row.state, row.step)
                table.add_row(*cells, key=row.key)
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

    def action_queue_start(self) -> None:
        if self.queue_command.busy:
            self.show_message("Already starting or stopping the queue…", "info")
            return
        self.show_message("Starting the queue's scheduler…", "info")
        self.queue_command("start")

    def action_queue_stop(self) -> None:
        if self.queue_command.busy:
            self.show_message("Already starting or stopping the queue…", "info")
            return
        status = self.queue or QueueStatus()
        if not status.alive and not status.running:
            self.show_message("Nothing to stop: no scheduler runs the queue and no job is running.", "info")
            return
        if not status.running:
            self.queue_command("stop")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.queue_command("stop")

        jobs = f"{status.running} running job{'s' * (status.running != 1)}"
        self.app.push_screen(ConfirmModal("Stop the queue?", f"The {jobs} save and stop; no new job starts. s runs "
                                                             "the queue again from their checkpoints."), answered)

    @work(thread=True, group="queue-command", exit_on_error=False)
    def _queue_command(self, what: str) -> tuple[str, str]:
        """`tiwiz queue run` with the previous run's settings (the same detached scheduler, core.queue.launch), or
        `tiwiz queue stop` without waiting (the panel shows the jobs stopping)."""
        from core.queue import daemon as launch
        from core.queue.scheduler import read_scheduler

        if what == "stop":
            asked = launch.stop_queue(self.queue_dir)
            return ("Stopping the queue: running jobs save and stop, no new job starts." if asked is None else
                    f"No scheduler is running; asked {asked} running job{'s' * (asked != 1)} to save and stop.",
                    "info")
        jobs = launch.check_startable(self.queue_dir)
        if not any(job.state in ("queued", "running", "stopped") for job in jobs):
            return ("Nothing to run: every job in the queue is finished or failed (`tiwiz queue retry JOB` queues "
                    "one again).", "info")
        settings = launch.scheduler_settings(read_scheduler(self.queue_dir).get("settings") or {})
        sched, jobs = launch.start_detached(self.queue_dir, settings)
        return f"Queue running (scheduler pid {sched.get('pid')}, {sched.get('backend')}). x stops it.", "ok"

    def _queue_command_done(self, message: tuple[str, str]) -> None:
        self.show_message(*message)
        self.poll_queue()

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

    def _highlighted_run(self) -> str | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def _selected_run(self) -> Path | None:
        key = self._highlighted_run()
        if key is None:
            self.show_message("No run to pick: start a new embedding or the demo.", "info")
            return None
        return Path(key)

    def action_attach(self) -> None:
        run = self._selected_run()
        if run is None:
            return
        self.app.state.run_dir = str(run)
        self.app.goto("monitor")

    def action_resume(self) -> None:
        """r: a stopped, killed or failed run continues at once; a finished one (auto-stop ends runs early) only
        after saying what would run. The worker is spawned off the UI thread."""
        key = self._highlighted_run()
        run = self._run(key) if key else None
        if run is None:
            self._selected_run()
            return
        if self.resuming.busy:
            return
        question = resume_question(run)
        if question is None:
            self._start_resume(run)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._start_resume(run)

        self.app.push_screen(ConfirmModal(*question), answered)

    def _start_resume(self, run: runapi.RunInfo) -> None:
        self.show_message(resume_started_text(run), "info")
        self.resuming(run.path)

    @work(thread=True, group="resume", exit_on_error=False)
    def _resume(self, run_dir: Path) -> Path:
        return runapi.resume_run(run_dir)  # a finished-all or live run raises: said by worker_failed

    def _resume_done(self, run_dir: Path) -> None:
        self.app.state.run_dir = str(run_dir)
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
