"""Every wizard screen at 80x24: each key the footer offers is shown whole (not cut mid-word, not pushed off)."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.tui_support import (copy_model, freeze_cursor, make_photos, recorded_events, wait_idle,
                               write_recorded_run)
from tui.app import TiwizApp
from tui.screens.base import SHORT_KEYS
from tui.state import WizardState

STAGES = ["start", "model", "folders", "preprocess", "captions", "embedding", "training", "finish"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ws80")
    copy_model(tiny_model_dir, root / "models" / "tiny")
    make_photos(root / "photos", 3, {0: "a photo of a cat, blue background"})
    write_recorded_run(root / "runs" / "mycat-1", recorded_events("mycat", steps=40, max_steps=40, finished=True),
                       state="finished")
    return root


def footer_problems(app) -> list[str]:
    """Shown bindings whose "key description" does not appear whole on the footer line."""
    import io

    from rich.console import Console
    from textual.widgets import Footer

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    footer = app.screen.query_one(Footer)
    line = console.export_text(styles=False).splitlines()[footer.region.y]
    missing = []
    for key, active in app.screen.active_bindings.items():
        binding = active.binding
        if not binding.show or not active.enabled:
            continue
        if not binding.description:
            continue
        words = {binding.description, SHORT_KEYS.get(binding.description, binding.description)}
        if not any(f"{key} {word}" in line or f"{app.get_key_display(binding)} {word}" in line for word in words):
            missing.append(f"{binding.description!r} not whole in {line.rstrip()!r}")
    return missing


@pytest.mark.parametrize("stage", STAGES)
def test_footer_fits_at_80x24(workspace, monkeypatch, stage):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TIWIZ_HOME", str(workspace / "home"))
    freeze_cursor(monkeypatch)
    state = WizardState(model="models/tiny", source="photos", dataset="photos", skip_preprocess=stage != "preprocess",
                        name="zxq-cat", init_text="a cat", vectors=2, run_dir="runs/mycat-1")
    app = TiwizApp(state=state, save=False, runs_root="runs", start_stage=stage, finder_roots=["models"])
    app.check_liveness = False

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            return footer_problems(app)
    assert asyncio.run(drive()) == []


MINE = ["start", "model", "folders", "embedding", "training", "finish", "monitor"]


@pytest.mark.parametrize("stage", MINE)
def test_header_and_footer_fit_at_60x20(workspace, monkeypatch, stage):
    """60x20 (issue 25 item 18): every key of the footer whole (compact, in its short words), and the header names
    the stage whole (the trail of stages gives way to "stage · next")."""
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TIWIZ_HOME", str(workspace / "home"))
    freeze_cursor(monkeypatch)
    state = WizardState(model="models/tiny", source="photos", dataset="photos", skip_preprocess=True,
                        name="zxq-cat", init_text="a cat", vectors=2, run_dir="runs/mycat-1")
    app = TiwizApp(state=state, save=False, runs_root="runs", start_stage=stage, finder_roots=["models"])
    app.check_liveness = False

    async def drive():
        async with app.run_test(size=(60, 20)) as pilot:
            await wait_idle(pilot)
            await pilot.pause(0.2)
            lines = screen_lines(app)
            return footer_problems(app), lines
    problems, lines = asyncio.run(drive())
    header = lines[0]
    assert problems == []
    if stage == "start":  # the runs table keeps its Loss column whole (narrower columns, no Age)
        row = next(line for line in lines if "mycat" in line and "finished" in line)
        assert any("Loss" in line for line in lines) and re.search(r"\b0\.\d{4}\b", row), lines
    from tui.state import STAGE_TITLES

    if stage != "monitor":
        assert STAGE_TITLES[stage] in header, header
    else:
        assert "● finished" in header and "step 40/40" in header


def screen_lines(app) -> list[str]:
    import io

    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False).splitlines()


ERROR = ("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 23.65 GiB total capacity; 21.10 GiB already "
         "allocated); lower batch_size or width/height, or turn gradient_checkpointing on")


@pytest.mark.parametrize("size", [(80, 24), (60, 20)])
def test_a_failed_runs_error_and_the_plot_legend_are_whole(tmp_path, monkeypatch, size):
    from core.runs import run_events as ev
    from tests.tui_support import T0

    monkeypatch.chdir(tmp_path)
    events = recorded_events("dog", steps=60, max_steps=1000)
    events.append(ev.Error(time=T0 + 61, message=ERROR).to_json())
    events.append(ev.Exit(time=T0 + 62, state="failed", step=60, reason="CUDA out of memory").to_json())
    write_recorded_run(tmp_path / "runs" / "dog-1", events, state="failed")
    app = TiwizApp(state=WizardState(run_dir="runs/dog-1"), save=False, runs_root="runs", start_stage="monitor",
                   finder_roots=[])
    app.check_liveness = False

    async def drive():
        async with app.run_test(size=size) as pilot:
            await wait_idle(pilot)
            await pilot.pause(0.3)
            return screen_lines(app)
    lines = asyncio.run(drive())
    left = " ".join(line.split("│")[0].strip() for line in lines)
    assert ERROR in left, left
    assert "smooth" in lines[2] and "loss" in lines[2] and "val" in lines[2]  # the legend names every series
