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


def _footer(screen) -> dict[str, str]:
    """The keys the footer offers now: {key: description} (what check_action allows and the binding shows)."""
    return {key: b.binding.description for key, b in screen.active_bindings.items() if b.binding.show and b.enabled}


def _text(widget) -> str:
    return str(widget.render())


def _quality_events(name: str) -> list[dict]:
    """A running run with the hold-out, the auto-stop rule and checkpoint reports, as the trainer writes them."""
    events = [ev.Started(time=T0, max_steps=400, step=0, name=name, device="cpu", precision="fp32", n_images=12,
                         n_holdout=2, auto_stop=True, auto_stop_window=60)]
    for step in range(1, 121):
        events.append(ev.Step(time=T0 + step, step=step, max_steps=400, loss=0.2 - step / 2000, lr=0.005))
        if step % 40 == 0:
            full = step >= 80
            events.append(ev.Validation(time=T0 + step, step=step, val_loss=0.15, holdout_loss=0.1 + step / 10000,
                                        best_step=40, auto_stop_ratio=0.42 if full else None,
                                        auto_stop_watched=min(step, 60), auto_stop_window=60,
                                        auto_stop_threshold=0.15))
            big = step == 120
            events.append(ev.Checkpoint(time=T0 + step, step=step, pt=f"embeddings/{name}-{step}.pt",
                                        safetensors=f"embeddings/{name}-{step}.safetensors",
                                        norms=[0.41, 2.5 if big else 0.44], vocab_median_norm=0.39,
                                        nearest=[[["cat", 0.82], ["kitten", 0.71]], [["<fur>", 0.5]]],
                                        best=step == 40))
            events.append(ev.Preview(time=T0 + step, step=step, path=f"previews/{name}-{step}.png"))
            if big:
                events.append(ev.Warning(time=T0 + step, step=step,
                                         message="vector 1's norm 2.5 is 6.4x the vocabulary's median 0.39"))
    return [e.to_json() for e in events]


def _app(run: Path) -> TiwizApp:
    app = TiwizApp(state=WizardState(run_dir=str(run)), save=False, runs_root="runs", start_stage="monitor")
    app.check_liveness = False
    return app


def test_monitor_shows_auto_stop_holdout_best_step_and_checkpoint_norms_at_80x24(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    run = tmp_path / "runs" / "cat-20250101-000000"
    write_recorded_run(run, _quality_events("cat"), state="running")

    async def drive():
        app = _app(run)
        async with app.run_test(size=(80, 24)) as pilot:
            monitor = app.screen
            await until(pilot, lambda: monitor.view.step == 120, "the history")
            quality = monitor.query_one("#mon-quality")
            await until(pilot, lambda: quality.display and "held-out" in _text(quality), "the quality line")
            text = _text(quality)
            assert text == "best step 40 · held-out 0.1120 · auto-stop: ratio 0.42 (flat below 0.15)"
            await until(pilot, lambda: quality.region.height, "the quality line's layout")
            assert quality.region.height == 2 and quality.region.bottom <= 22  # whole at 80x24, above the footer
            menu = monitor.query_one("#mon-checkpoints")
            await until(pilot, lambda: menu.option_count == 3, "the checkpoint rows")
            prompts = [str(menu.get_option_at_index(i).prompt) for i in range(3)]
            assert prompts == ["step     40  ▣ ★", "step     80  ▣", "step    120  ▣ !"]
            assert "norm" in str(monitor.query_one("#mon-warnings").render())  # the trainer's warning is shown
            assert _footer(monitor).get("i") == "Details"
            await pilot.press("i")
            details = monitor.query_one("#mon-details")
            assert details.display and not monitor.query_one("#mon-plot").display
            text = _text(details)
            assert not quality.display  # the panel says it in full instead
            assert "auto-stop: variance ratio 0.42 over the last 60 steps (stops below 0.15)" in text
            assert "checkpoint step 120" in text and "vocab median 0.39" in text
            assert "v0 0.41 (1.1×) cat 0.82, kitten 0.71" in text
            assert "v1 2.5 (6.4×) ⚠" in text
            narrow = [line for line in text.splitlines()[1:] if len(line) > details.content_size.width]
            assert narrow == []  # a vector's line is whole at 80 columns, not wrapped
            monitor.query_one("#mon-checkpoints").highlighted = 0  # the details follow the highlighted checkpoint
            await until(pilot, lambda: "checkpoint step 40" in _text(details), "step 40's details")
            assert "★ suggested best step" in _text(details) and "⚠" not in _text(details)
            await pilot.press("i")
            assert monitor.query_one("#mon-plot").display and not details.display and quality.display

    asyncio.run(drive())


def test_monitor_says_rendering_preview_while_the_worker_renders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    run = tmp_path / "runs" / "cat-20250101-000000"
    write_recorded_run(run, recorded_events("cat", steps=40, max_steps=400, every=40), state="running")

    async def drive():
        app = _app(run)
        async with app.run_test(size=(100, 30)) as pilot:
            monitor = app.screen
            label = monitor.query_one("#mon-preview-label")
            await until(pilot, lambda: "latest preview: step 40" in _text(label), "the first preview")
            _append(run, *[ev.Step(time=T0 + 40 + i, step=40 + i, max_steps=400, loss=0.1) for i in range(1, 11)],
                    ev.PreviewRendering(time=T0 + 51, step=50))
            await until(pilot, lambda: "rendering preview (step 50)…" in _text(label), "the rendering line")
            gradient_png(run / "previews" / "cat-50.png", seed=3)
            _append(run, ev.Preview(time=T0 + 52, step=50, path="previews/cat-50.png"))
            await until(pilot, lambda: "latest preview: step 50" in _text(label), "the new preview")
            # A failed render (its warning) ends the line too.
            _append(run, ev.PreviewRendering(time=T0 + 53, step=50))
            await until(pilot, lambda: "rendering preview (step 50)…" in _text(label), "the second rendering line")
            _append(run, ev.Warning(time=T0 + 54, step=50, message="preview at step 50 failed: RuntimeError: OOM"))
            await until(pilot, lambda: "latest preview: step 50" in _text(label), "the line after the failure")

    asyncio.run(drive())


def test_stopped_run_offers_resume_and_finish_and_clears_the_stopped_line_after_a_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    run = tmp_path / "runs" / "cat-20250101-000000"
    events = recorded_events("cat", steps=40, max_steps=400, every=40)
    events.append(ev.Stopped(time=T0 + 41, step=40, reason="stop", pt="cat.pt", safetensors="cat.safetensors")
                  .to_json())
    write_recorded_run(run, events, state="stopped")

    async def drive():
        app = _app(run)
        async with app.run_test(size=(100, 30)) as pilot:
            monitor = app.screen
            message = monitor.query_one("#message")
            await until(pilot, lambda: "Stopped and saved" in _text(message), "the stopped line")
            footer = _footer(monitor)
            assert footer.get("r") == "Resume" and footer.get("f") == "Finish"
            assert not {"s", "v", "p", "d"} & set(footer), footer
            await pilot.press("s")  # stopping a stopped run is not offered: no confirmation pops up
            assert app.screen is monitor
            # r resumes through core.runs.api in a worker: this recorded run has no config.toml, which it says.
            await pilot.press("r")
            await until(pilot, lambda: "nothing to resume" in _text(message), "the resume error")
            await until(pilot, lambda: _footer(monitor).get("r") == "Resume", "r offered again")
            # What a resumed worker writes: the stale "Stopped and saved" line goes, stop is offered again.
            _append(run, ev.Started(time=T0 + 50, step=40, max_steps=400, name="cat", resumed=True),
                    ev.Step(time=T0 + 51, step=41, max_steps=400, loss=0.1))
            await until(pilot, lambda: monitor.view.state == "running", "the resumed run")
            await until(pilot, lambda: _text(message).strip() == "", "the cleared message")
            footer = _footer(monitor)
            assert footer.get("s") == "Stop" and "r" not in footer and "f" not in footer

    asyncio.run(drive())


def test_failed_run_shows_its_error_not_waiting_and_the_preview_grows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    run = tmp_path / "runs" / "cat-20250101-000000"
    events = [ev.Started(time=T0, max_steps=400, step=0, name="cat"),
              ev.Error(time=T0 + 1, message="CUDA out of memory: lower the batch size"),
              ev.Exit(time=T0 + 2, state=ev.RunPhase.FAILED, step=0, reason="CUDA out of memory")]
    write_recorded_run(run, [e.to_json() for e in events], state="failed")

    async def drive():
        app = _app(run)
        async with app.run_test(size=(160, 40)) as pilot:
            monitor = app.screen
            await until(pilot, lambda: monitor.view.state == "failed", "the failed state")
            await pilot.pause(0.3)
            plot = monitor.query_one("#mon-plot")
            lines = ["".join(seg.text for seg in plot.render_line(y)) for y in range(4)]
            assert any("the run failed before its first step" in line for line in lines), lines
            assert not any("waiting" in line for line in lines)
            assert "CUDA out of memory: lower the batch size" in _text(monitor.query_one("#mon-warnings"))
            footer = _footer(monitor)
            assert not {"s", "v", "p", "d", "r", "f"} & set(footer), footer
            assert monitor.query_one("#mon-preview").size.width > 48  # the right column grows with the terminal

    asyncio.run(drive())
