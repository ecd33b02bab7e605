"""The wizard started exactly as the console script starts it (`tiwiz`, `tiwiz --demo`: no --runs, no injected
folders), driven through ctrl+n on Training settings: the run lands in the CLI's default runs folder (issue 25 item 1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.tui_support import console_app, continue_saved, copy_model, make_photos, until, wait_idle
from tui.state import WizardState


async def start_training_from_settings(app, pilot, runs: Path) -> None:
    assert app.screen.STAGE == "training", app.screen.query_one("#message").content
    await pilot.press("ctrl+n")
    await wait_idle(pilot)
    detail = " ".join(str(w.content) for w in app.screen.query(".dialog-detail")).replace("\n", " ")
    assert str(runs) in detail, detail  # the confirmation names the folder the run goes to
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
    app = console_app([], saved=saved)

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot, "training")
            await start_training_from_settings(app, pilot, console.resolve() / "runs")
            app.exit()
    asyncio.run(drive())


@pytest.mark.slow  # the demo's helper prepares the shipped model and images, then a real worker starts
def test_tiwiz_demo_goes_through_ctrl_n(console):
    app = console_app(["--demo"])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: getattr(app.screen, "STAGE", "") == "captions", 120, "the demo")
            await wait_idle(pilot)
            for stage in ("embedding", "training"):
                await pilot.press("ctrl+n")
                await wait_idle(pilot)
                assert app.screen.STAGE == stage, app.screen.query_one("#message").content
            await start_training_from_settings(app, pilot, console.resolve() / "runs")
            app.exit()
    asyncio.run(drive())


@pytest.mark.parametrize("argv,prog", [(["wizard", "--help"], "tiwiz wizard"), (["--help-me"], "tiwiz")])
def test_the_wizards_usage_names_the_command_it_was_given(argv, prog):
    """`tiwiz wizard --help` says `usage: tiwiz wizard` (issue 25 item 22); a bad wizard flag names `tiwiz`. (The
    console script is tui.main:main.)"""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "tui.main", *argv], capture_output=True, text=True, cwd=root,
                          timeout=120)
    assert f"usage: {prog} [-h]" in done.stdout + done.stderr
