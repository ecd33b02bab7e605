"""The Start screen's runs, on the wizard started as `tiwiz`: the list follows the runs folder (issue 25 item 6), and
`r` on a finished run says what resuming would train before it does (item 5); resuming runs off the UI thread and a
refusal is said, never a crash."""

from __future__ import annotations

from core.atomic import atomic_write_json
from tests.tui_support import (burst, console_app, drive, message_text, recorded_events, until, wait_idle,
                               write_recorded_run)


def recorded(run_dir, state: str, **status):
    write_recorded_run(run_dir, recorded_events("zxq-cat", steps=60, max_steps=100, every=20,
                                                finished=state == "finished"), state=state)
    data = {**__import__("json").loads((run_dir / "status.json").read_text()), **status}
    atomic_write_json(run_dir / "status.json", data)
    (run_dir / "config.toml").write_text(f'model = "{run_dir.parent / "gone-model"}"\ndata = "{run_dir}"\n'
                                         'name = "zxq-cat"\nsteps = 100\n')
    return run_dir


def rows(app) -> list[str]:
    table = app.screen.query_one("#runs")
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


def test_the_run_list_follows_the_runs_folder(console):
    app = console_app([])

    async def body(pilot):
        await wait_idle(pilot)
        assert "No runs yet" in str(app.screen.query_one("#runs-empty").content)
        run = recorded(console / "runs" / "zxq-cat-1", "running")  # no worker holds it: listed as killed
        await until(pilot, lambda: rows(app) == ["killed"], 30, "the new run in the list")
        assert "No runs yet" not in str(app.screen.query_one("#runs-empty").content)
        recorded(run, "stopped", step=60)
        await until(pilot, lambda: rows(app) == ["stopped"], 30, "the run's new state")
    drive(app, body)


def test_r_on_a_finished_run_asks_and_says_what_would_run(console):
    run = recorded(console / "runs" / "zxq-cat-1", "finished", step=60, last_checkpoint=60,
                   reason="auto-stop: the validation loss went flat")
    before = (run / "status.json").read_text()
    app = console_app([])

    async def body(pilot):
        await until(pilot, lambda: rows(app) == ["finished"], 30, "the run")
        await burst(pilot, "r")
        detail = " ".join(str(w.content) for w in app.screen.query(".dialog-detail, .dialog-title"))
        assert "step 60 of 100" in detail and "auto-stop" in detail and "up to step 100" in detail, detail
        await burst(pilot, "n")
        assert getattr(app.screen, "STAGE", None) == "start"
        assert (run / "status.json").read_text() == before  # nothing was started
        await burst(pilot, "r", "y")  # yes: the real resume runs (in a worker) and its refusal is said
        await until(pilot, lambda: "gone-model" in message_text(app), 30, "the resume's refusal")
        assert getattr(app.screen, "STAGE", None) == "start" and app.is_running
    drive(app, body)


def test_r_on_a_stopped_run_resumes_without_asking(console):
    recorded(console / "runs" / "zxq-cat-1", "stopped", step=40, last_checkpoint=40)
    app = console_app([])

    async def body(pilot):
        await until(pilot, lambda: rows(app) == ["stopped"], 30, "the run")
        await burst(pilot, "r")
        assert len(app.screen_stack) == 2  # no question
        await until(pilot, lambda: "gone-model" in message_text(app), 30, "the resume's refusal")
    drive(app, body)


def test_the_monitor_of_a_resumed_finished_run_says_starting_not_finished(console):
    """A finished run whose worker was just spawned again (its status says "starting", as core.runs.api writes it
    before the worker runs): `tiwiz --attach RUN` shows it starting until the new life's first event."""
    from core.runs.folder import write_status
    from core.runs.run_events import RunPhase

    run = recorded(console / "runs" / "zxq-cat-1", "finished", step=60, last_checkpoint=60)
    write_status(run, {"pid": None, "state": "starting", "name": "zxq-cat", "step": 60, "max_steps": 100,
                       "last_checkpoint": 60, "resumed": True, "reason": ""})
    app = console_app(["--attach", str(run)])

    async def body(pilot):
        await until(pilot, lambda: app.screen.view.state == RunPhase.STARTING, 30, "the starting state")
        assert "Finished" not in message_text(app)
        assert "starting" in str(app.screen.query_one("#mon-header").render()).lower()
    drive(app, body)
