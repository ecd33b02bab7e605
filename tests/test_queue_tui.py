"""The queue in the wizard: the start screen lists the jobs (state, GPU, step) and Enter attaches to a job's run; the
training screen adds the embedding to the queue (f6) beside starting it now (ctrl+n)."""

from __future__ import annotations

import asyncio

from core.queue.jobs import add_jobs, list_jobs, load_job
from core.training.config import TrainConfig
from tests.tui_support import make_photos, recorded_events, wait_idle, write_recorded_run
from tui.app import TiwizApp
from tui.state import WizardState


def test_start_screen_lists_the_queue_and_enter_attaches(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    data = make_photos(tmp_path / "photos", 1)
    runs = tmp_path / "runs"
    first, second = add_jobs(runs / "queue", [(n, {"model": str(model), "data": str(data), "name": n}, n)
                                              for n in ("zxq-cat", "zxq-dog")])
    write_recorded_run(runs / "zxq-cat", recorded_events("zxq-cat", steps=40, max_steps=400))
    first.save(state="running", gpu="1", attempts=1, lives=[{"event": "launch", "attempt": 1, "gpu": "1"}])
    app = TiwizApp(state=WizardState(), save=False, runs_root=runs)

    async def drive():
        async with app.run_test(size=(110, 40)) as pilot:
            await wait_idle(pilot)
            table = app.screen.query_one("#queue")
            assert table.display and table.row_count == 2
            assert [str(c) for c in table.get_row_at(0)] == ["zxq-cat", "running", "1", "40/400"]
            assert [str(c) for c in table.get_row_at(1)] == ["zxq-dog", "queued", "-", "-"]
            table.focus()
            table.move_cursor(row=1)
            await pilot.press("enter")
            await wait_idle(pilot)
            assert "has not started yet" in str(app.screen.query_one("#message").content)
            table.move_cursor(row=0)
            await pilot.press("enter")
            await wait_idle(pilot)
            assert app.screen.__class__.__name__ == "MonitorScreen"
            assert app.state.run_dir == str((runs / "zxq-cat").resolve())
    asyncio.run(drive())


def test_start_screen_hides_an_empty_queue(tmp_path):
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs")

    async def drive():
        async with app.run_test(size=(110, 40)) as pilot:
            await wait_idle(pilot)
            assert not app.screen.query_one("#queue").display
            assert not app.screen.query_one("#queue-label").display
    asyncio.run(drive())


def test_training_screen_adds_the_embedding_to_the_queue(tmp_path, tiny_model_dir):
    make_photos(tmp_path / "photos", 2)
    runs = tmp_path / "runs"
    state = WizardState(model=str(tiny_model_dir), dataset=str(tmp_path / "photos"), name="zxq-cat",
                        init_text="a cat", train={"steps": "300"})
    app = TiwizApp(state=state, save=False, runs_root=runs, start_stage="training", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("f6")
            await wait_idle(pilot)
            assert "Added job zxq-cat to the queue" in str(app.screen.query_one("#message").content)
            assert app.screen.__class__.__name__ == "TrainingScreen"  # nothing started
    asyncio.run(drive())
    (job,) = list_jobs(runs / "queue")
    assert (job.name, job.state) == ("zxq-cat", "queued")
    config = TrainConfig.from_toml(job.config_path)
    assert (config.name, config.steps, config.init_text) == ("zxq-cat", 300, "a cat")
    assert config.output == str((runs / "zxq-cat").resolve()) and not (runs / "zxq-cat").exists()
    assert load_job(runs / "queue", "zxq-cat").attempts == 0
