"""Start: a new embedding, continue where you left off, the demo, or a run found on disk (attach or resume)."""

from __future__ import annotations

from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Label, OptionList, Static
from textual.widgets.option_list import Option

from tui import runs_info
from tui.screens.base import WizardScreen, error_text
from tui.state import STAGE_TITLES, WizardState


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
        Binding("escape", "back", "Back", show=False),
        Binding("ctrl+n", "next", "Next", show=False),
    ]

    def compose_body(self) -> ComposeResult:
        with Vertical(id="start-body"):
            yield Static("Train a textual-inversion embedding for Stable Diffusion.", classes="lead")
            yield OptionList(id="start-menu")
            yield Label("Runs on disk", classes="section")
            yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
            yield Static("", id="runs-detail", classes="hint", markup=False)
            yield Static("", id="runs-empty", classes="hint")
            yield Label("Queue (tiwiz queue run runs it; Enter attaches to a job's run)", id="queue-label",
                        classes="section")
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
        self._runs: dict[str, runs_info.RunSummary] = {}
        queue = self.query_one("#queue", DataTable)
        for label, width in (("Job", 28), ("State", 16), ("GPU", 8), ("Step", 12)):
            queue.add_column(label, width=width)
        queue.display = self.query_one("#queue-label").display = False  # shown once jobs are found
        self._queue_started: dict[str, bool] = {}
        self.load_runs()
        self.load_queue()

    @work(thread=True, exclusive=True, group="runs", exit_on_error=False)
    def load_runs(self) -> None:
        runs = runs_info.list_runs(self.app.runs_root)
        ages = {str(run.path): run_age(run.path) for run in runs}
        self.app.call_from_thread(self._show_runs, runs, ages)

    def _show_runs(self, runs: list[runs_info.RunSummary], ages: dict[str, str] | None = None) -> None:
        from rich.text import Text

        table = self.query_one("#runs", DataTable)
        table.clear()
        self._runs = {str(run.path): run for run in runs}
        for run in runs:
            loss = "" if run.loss is None else f"{run.loss:.4f}"
            step = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
            table.add_row(Text(run.name), str(run.state), step, loss, (ages or {}).get(str(run.path), ""),
                          key=str(run.path))
        if runs:
            self._show_run_detail(str(runs[0].path))
        self.query_one("#runs-empty", Static).update(
            "" if runs else "No runs yet. They appear here while training and after it, ready to attach or resume."
        )
        table.display = bool(runs)

    @work(thread=True, exclusive=True, group="queue", exit_on_error=False)
    def load_queue(self) -> None:
        from core.queue.jobs import default_queue_dir
        from core.queue.status import job_rows

        rows = job_rows(default_queue_dir(self.app.runs_root))
        self.app.call_from_thread(self._show_queue, rows)

    def _show_queue(self, rows) -> None:
        table = self.query_one("#queue", DataTable)
        table.clear()
        self._queue_started = {row.run_dir or row.name: row.started for row in rows}
        for row in rows:
            step = f"{row.step}/{row.max_steps}" if row.max_steps else "-"
            table.add_row(row.name, row.state, row.gpu or "-", step, key=row.run_dir or row.name)
        table.display = self.query_one("#queue-label").display = bool(rows)

    @on(DataTable.RowSelected, "#queue")
    def _job_selected(self, event: DataTable.RowSelected) -> None:
        key = str(event.row_key.value)
        if not self._queue_started.get(key):
            self.show_message("That job has not started yet: `tiwiz queue run` starts the queue.", "info")
            return
        self.app.state.run_dir = key
        self.app.goto("monitor")

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
            runs_info.resume(run)
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
        run = self._runs.get(key)
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
