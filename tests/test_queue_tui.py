"""The queue in the wizard: the start screen lists the jobs (state, GPU, step) and Enter attaches to a job's run; the
panel follows a real detached scheduler without a key press, s starts the queue (one scheduler, even when pressed
twice at paste speed) and x stops it gracefully after a confirmation; the training screen adds the embedding to the
queue (f6) beside starting it now (ctrl+n)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from core.errors import TiwizError
from core.queue import daemon
from core.queue import scheduler as sched
from core.queue.jobs import add_jobs, list_jobs, load_job
from core.runs import folder as runs
from core.training.config import TrainConfig
from queue_helpers import cli, shared_data
from tests.tui_support import burst, make_photos, recorded_events, wait_idle, write_recorded_run
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


# ---- the live panel, with a real detached scheduler ----------------------------------------------------------------

def tiny_job(model: Path, data: Path, name: str, steps: int) -> tuple:
    return (name, dict(model=str(model), data=str(data), name=name, steps=steps, width=64, height=64, save_every=0,
                       preview_every=0, validate_every=0, device="cpu"), name)


async def until(pilot, condition, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def states(app) -> list[str]:
    table = app.screen.query_one("#queue")
    return [str(table.get_row_at(i)[1]) for i in range(table.row_count)]


def footer_keys(app) -> set[str]:
    return {binding.action for (_, binding, enabled, _) in app.screen.active_bindings.values()
            if binding.show and enabled}


def scheduler_starts(queue: Path) -> int:
    """How many schedulers got the queue's lock (each logs one `started` line)."""
    log = queue / sched.SCHEDULER_LOG
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(" started: " in line and "scheduler pid" in line for line in text.splitlines())


def stop_scheduler(queue: Path) -> None:
    """Leave no process behind when a test fails half way."""
    if sched.scheduler_alive(queue):
        daemon.stop_queue(queue)
        deadline = time.monotonic() + 120
        while sched.scheduler_alive(queue) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow
def test_queue_panel_follows_a_scheduler_without_a_key_press(tmp_path, tmp_path_factory, tiny_model_dir):
    root = tmp_path / "runs"
    queue = root / "queue"
    add_jobs(queue, [tiny_job(tiny_model_dir, shared_data(tmp_path_factory), "zxq-one", steps=150)])
    app = TiwizApp(state=WizardState(), save=False, runs_root=root)
    seen: list[str] = []

    def record() -> list[str]:
        now = states(app)
        if now and (not seen or seen[-1] != now[0]):
            seen.append(now[0])
        return now

    async def drive():
        async with app.run_test(size=(110, 40)) as pilot:
            await until(pilot, lambda: record() == ["queued"], "the queued job")
            assert "queue_start" in footer_keys(app) and "queue_stop" not in footer_keys(app)
            started = await asyncio.to_thread(cli, "queue", "run", "--slots", 1, "--root", root)  # another terminal
            assert started.returncode == 0, started.stderr
            await until(pilot, lambda: record() == ["finished"], "the finished job")
            await until(pilot, lambda: not app.screen.queue.alive, "the scheduler to exit")
            assert app.screen.query_one("#queue").get_row_at(0)[3] == "150/150"
    try:
        asyncio.run(drive())
    finally:
        stop_scheduler(queue)
    assert seen[0] == "queued" and seen[-1] == "finished"
    assert "running" in seen, seen  # shown while it trained, without any key press
    assert seen.index("running") < seen.index("finished")


@pytest.mark.slow
def test_queue_start_twice_at_paste_speed_starts_one_scheduler_and_stop_saves(tmp_path, tmp_path_factory,
                                                                             tiny_model_dir):
    root = tmp_path / "runs"
    queue = root / "queue"
    add_jobs(queue, [tiny_job(tiny_model_dir, shared_data(tmp_path_factory), "zxq-long", steps=100000)])
    app = TiwizApp(state=WizardState(), save=False, runs_root=root)

    async def drive():
        async with app.run_test(size=(110, 40)) as pilot:
            await until(pilot, lambda: states(app) == ["queued"], "the queued job")
            await burst(pilot, "s", "s")  # both keys queued before the app handles the first
            await until(pilot, lambda: app.screen.queue.alive and states(app) == ["running"], "the running job")
            assert scheduler_starts(queue) == 1
            # The core lock refuses a second scheduler whoever asks (here: the CLI's own start, at once).
            with pytest.raises(TiwizError, match="already running"):
                await asyncio.to_thread(daemon.start_detached, queue, {"retries": 0, "ray": "", "gpus": None,
                                                                      "slots": 1, "on_finish": ""})
            assert "queue_stop" in footer_keys(app) and "queue_start" not in footer_keys(app)
            assert "Queue: running" in str(app.screen.query_one("#queue-label").content)
            await until(pilot, lambda: (runs.read_status(root / "zxq-long") or {}).get("step", 0) >= 1, "a step")
            await pilot.press("x")  # it stops a running job: asks first
            assert type(app.screen).__name__ == "ConfirmModal"
            await pilot.press("n")
            assert sched.scheduler_alive(queue) and not (queue / sched.STOP).exists()
            await pilot.press("x")
            await pilot.press("y")
            await until(pilot, lambda: not app.screen.queue.alive and states(app) == ["stopped"], "the stop")
            assert "queue_start" in footer_keys(app)
    try:
        asyncio.run(drive())
    finally:
        stop_scheduler(queue)
    assert scheduler_starts(queue) == 1
    assert sched.read_scheduler(queue)["state"] == "stopped"
    info = runs.inspect_run(root / "zxq-long")
    assert (info.alive, info.reason) == (False, "stop requested")
    assert info.last_checkpoint == info.step >= 1 and (root / "zxq-long" / "zxq-long.safetensors").is_file()
    (job,) = list_jobs(queue)
    assert job.state == "stopped"


def test_queue_keys_say_when_there_is_nothing_to_run_or_stop(tmp_path):
    root = tmp_path / "runs"
    queue = root / "queue"
    model = tmp_path / "model"
    model.mkdir()
    data = make_photos(tmp_path / "photos", 1)
    (job,) = add_jobs(queue, [("zxq-done", {"model": str(model), "data": str(data), "name": "zxq-done"}, "zxq")])
    job.save(state="finished")
    app = TiwizApp(state=WizardState(), save=False, runs_root=root)

    async def drive():
        async with app.run_test(size=(110, 40)) as pilot:
            await until(pilot, lambda: states(app) == ["finished"], "the finished job", timeout=30)
            assert footer_keys(app) >= {"queue_start"} and "queue_stop" not in footer_keys(app)
            await pilot.press("s")
            await wait_idle(pilot)
            assert "Nothing to run" in str(app.screen.query_one("#message").content)
            await pilot.press("x")  # not offered: nothing happens
            await wait_idle(pilot)
            assert "Nothing to run" in str(app.screen.query_one("#message").content)
    asyncio.run(drive())
    assert not (queue / sched.SCHEDULER_LOG).exists() and not sched.scheduler_alive(queue)  # nothing was started
