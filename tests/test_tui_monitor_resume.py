"""The monitor resumes a stopped run with r: core.runs.api spawns a real worker from a thread worker, the stale
"Stopped and saved" line goes, the run trains on past its checkpoint, and the footer offers stop again."""

from __future__ import annotations

import asyncio

import pytest

from core.runs import api as runapi
from core.runs.run_events import Command
from test_runs_worker import next_events, wait_done
from tests.test_tui_monitor import _app, _footer, _text, until
from train_helpers import make_images, tiny_config

pytestmark = pytest.mark.slow  # two lives of a real detached worker (~20-40 s on 2 busy cores)


def test_r_resumes_a_stopped_run_from_the_monitor(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    data = make_images(tmp_path / "data", n=2)
    run = runapi.start_run(tiny_config(tiny_model_dir, data, output=str(tmp_path / "run"), steps=5000,
                                       save_every=2, preview_every=0))
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "checkpoint", "the first checkpoint")
    runapi.send_command(run, Command.STOP)
    assert wait_done(run).state == "stopped"

    async def drive():
        app = _app(run)
        app.check_liveness = True  # a real worker: the monitor also watches whether it lives
        async with app.run_test(size=(80, 24)) as pilot:
            monitor = app.screen
            message = monitor.query_one("#message")
            await until(pilot, lambda: "Stopped and saved" in _text(message), "the stopped line")
            stopped_at = monitor.view.step
            assert _footer(monitor).get("r") == "Resume"
            await pilot.press("r")
            await until(pilot, lambda: monitor.view.state == "running" and monitor.view.step > stopped_at, "steps of "
                        "the resumed run", timeout=180)
            assert "Stopped and saved" not in _text(message)
            assert monitor.view.resumed
            footer = _footer(monitor)
            assert footer.get("s") == "Stop" and "r" not in footer
            await pilot.press("s")
            await pilot.press("y")
            await until(pilot, lambda: monitor.view.state == "stopped", "the second stop", timeout=180)

    try:
        asyncio.run(drive())
    finally:
        if runapi.inspect_run(run).alive:
            runapi.send_command(run, Command.STOP)
        wait_done(run)
