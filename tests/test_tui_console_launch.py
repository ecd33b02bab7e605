"""The wizard started exactly as the console script starts it (`tiwiz`, `tiwiz --demo`: no --runs, no injected
folders), driven through ctrl+n on Training settings: the run lands in the CLI's default runs folder."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.tui_support import copy_model, freeze_cursor, make_photos, wait_idle
from tui.app import make_app
from tui.state import WizardState, default_state_path, save_state


@pytest.fixture
def console(tmp_path, monkeypatch):
    """A user's shell: a home of their own, the current folder, no tiwiz variables set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("TIWIZ_HOME", "TIWIZ_RUNS_DIR", "TIWIZ_IMAGES", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    freeze_cursor(monkeypatch)
    return tmp_path


async def until(pilot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            shown = [str(w.content) for w in pilot.app.screen.query("#message")]
            raise AssertionError(f"timed out waiting for {what} (message: {shown})")
        await pilot.pause(0.2)


async def start_training_from_settings(app, pilot, runs) -> None:
    assert app.screen.STAGE == "training", app.screen.query_one("#message").content
    await pilot.press("ctrl+n")
    await wait_idle(pilot)
    detail = " ".join(str(w.content) for w in app.screen.query(".dialog-detail"))
    assert str(runs) in detail.replace("\n", " "), detail  # the confirm names the folder the run goes to
    await pilot.press("y")
    await until(pilot, lambda: type(app.screen).__name__ == "MonitorScreen", 120, "the monitor")
    assert app.is_running
    run_dir = Path(app.state.run_dir)
    assert run_dir.parent == runs and (run_dir / "config.toml").exists()


def test_plain_tiwiz_continues_to_training_and_starts(console, tiny_model_dir):
    copy_model(tiny_model_dir, console / "model")
    make_photos(console / "photos", 2)
    saved = WizardState(model=str(console / "model"), source=str(console / "photos"),
                        dataset=str(console / "photos"), skip_preprocess=True, name="zxq-cat", init_text="cat",
                        stage="training", train={"steps": "2", "width": "64", "height": "64", "device": "cpu",
                                                 "preview_every": "0", "save_every": "0"})
    save_state(saved, default_state_path())
    app = make_app([])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("c")  # continue where the saved state left off
            await wait_idle(pilot)
            await start_training_from_settings(app, pilot, (console / "runs").absolute())
            app.exit()
    asyncio.run(drive())


@pytest.mark.slow  # the demo's helper prepares the shipped model and images, then a real worker starts
def test_tiwiz_demo_goes_through_ctrl_n(console):
    app = make_app(["--demo"])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: getattr(app.screen, "STAGE", "") == "captions", 120, "the demo")
            await wait_idle(pilot)
            for stage in ("embedding", "training"):
                await pilot.press("ctrl+n")
                await wait_idle(pilot)
                assert app.screen.STAGE == stage, app.screen.query_one("#message").content
            await start_training_from_settings(app, pilot, (console / "runs").absolute())
            app.exit()
    asyncio.run(drive())
