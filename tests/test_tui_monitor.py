"""The training monitor on recorded run folders: it follows the log in a thread worker, shows the preview marker of a
checkpoint whose preview arrives after it, and shows a killed worker. The loss plot keeps a lone spike among 100k
steps."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

from core.runs import run_events as ev
from tests.tui_support import T0, freeze_cursor, gradient_png, recorded_events, write_recorded_run
from tui.app import TiwizApp
from tui.state import WizardState
from tui.widgets.loss_plot import Series, render_plot


async def until(pilot, condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def _append(run_dir: Path, *events: ev.RunEvent) -> None:
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as fh:
        for event in events:
            fh.write(event.to_line() + "\n")


def test_checkpoint_shows_its_preview_marker_when_the_preview_comes_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    freeze_cursor(monkeypatch)
    run = tmp_path / "runs" / "cat-20250101-000000"
    events = [e for e in recorded_events("cat", steps=80, max_steps=400, every=40)
              if not (e["type"] == "preview" and e["step"] == 80)]  # the step-80 preview is still rendering
    write_recorded_run(run, events, state="running")

    async def drive():
        app = TiwizApp(state=WizardState(run_dir=str(run)), save=False, runs_root="runs", start_stage="monitor")
        app.check_liveness = False
        async with app.run_test(size=(100, 30)) as pilot:
            monitor = app.screen
            await until(pilot, lambda: monitor.view.step == 80, "the history")
            menu = monitor.query_one("#mon-checkpoints")
            await until(pilot, lambda: menu.option_count == 2, "the checkpoint rows")
            prompts = lambda: [str(menu.get_option_at_index(i).prompt) for i in range(menu.option_count)]  # noqa: E731
            assert prompts() == ["step     40  ▣", "step     80"]
            gradient_png(run / "previews" / "cat-80.png", seed=2)
            _append(run, ev.Preview(time=T0 + 81, step=80, path="previews/cat-80.png"))
            await until(pilot, lambda: prompts() == ["step     40  ▣", "step     80  ▣"], "the step-80 marker")
            # New steps arrive through the worker's messages and reach the plot.
            _append(run, *[ev.Step(time=T0 + 81 + i, step=80 + i, max_steps=400, loss=0.1) for i in range(1, 4)])
            await until(pilot, lambda: monitor.view.step == 83, "the new steps")
            plot = monitor.query_one("#mon-plot")
            await until(pilot, lambda: len(plot.raw) == 83, "the plot's points")

    asyncio.run(drive())


def test_monitor_shows_a_killed_worker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    run = tmp_path / "runs" / "dog-20250101-000000"
    write_recorded_run(run, recorded_events("dog", steps=30, max_steps=400, every=40), state="running")

    async def drive():
        app = TiwizApp(state=WizardState(run_dir=str(run)), save=False, runs_root="runs", start_stage="monitor")
        async with app.run_test(size=(100, 30)) as pilot:
            monitor = app.screen
            await until(pilot, lambda: monitor.view.state == "killed", "the killed state")
            assert "killed at step 30" in monitor.view.error

    asyncio.run(drive())


def test_loss_plot_keeps_a_lone_spike_among_100k_steps():
    raw = [(i, 0.1 + 0.01 * math.sin(i / 300)) for i in range(1, 100_001)]
    raw[61_234] = (61_235, 2.0)
    series = Series()
    series.sync(raw)
    lines = render_plot(series, series, [], 60, 12).plain.split("\n")
    top = lines[1][8:]  # the highest row of the braille area
    assert top.strip() and len(top.strip()) == 1, lines
    column = top.index(top.strip())
    assert abs(column / 52 - 61_235 / 100_000) < 0.05
    # Appending reuses what is there; a cut (a resume) rebuilds.
    series.sync(raw + [(100_001, 0.1)])
    assert len(series) == 100_001
    series.sync(raw[:500])
    assert len(series) == 500 and series.last == raw[499][1]
    # A NaN validation loss is left out, not drawn at a bogus height.
    lines = render_plot(raw[:10], raw[:10], [(2, float("nan")), (8, 0.1)], 60, 8).plain.split("\n")
    assert len(lines) == 8 and "val 0.1000" in lines[0]
