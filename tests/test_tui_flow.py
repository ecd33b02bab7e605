"""Pilot tests that drive the whole wizard with the real helper subprocesses and the real detached worker on the tiny
model: folders → preprocessing → caption editing → embedding → settings → training → an embedding diffusers loads.
And: killing the UI mid-training leaves the run going, and a new UI attaches with the whole loss history."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.prep.captions import read_caption
from core.runs.folder import inspect_run, send_command
from tests.tui_support import copy_model, freeze_cursor, make_photos, wait_idle
from tui.app import TiwizApp
from tui.state import WizardState

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    freeze_cursor(monkeypatch)
    copy_model(tiny_model_dir, tmp_path / "model")
    make_photos(tmp_path / "photos", 3, {0: "a cat, blue background"})
    return tmp_path


async def until(pilot, condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.2)


def set_value(app, selector: str, value: str) -> None:
    app.screen.query_one(selector).value = value


TRAIN_SETTINGS = {"#tr-steps": "4", "#tr-width": "64", "#tr-height": "64", "#tr-save_every": "2",
                  "#tr-preview_every": "4", "#tr-preview_steps": "2", "#tr-validate_every": "4",
                  "#tr-validation_images": "1", "#tr-device": None}


@pytest.mark.slow  # every stage, a real worker training, then diffusers loading the result (~90 s loaded)
def test_whole_wizard_with_real_worker(workspace):
    ws = workspace
    app = TiwizApp(state=WizardState(), state_path=ws / "home" / "wizard.json", runs_root=ws / "runs",
                   finder_roots=[])

    async def drive() -> Path:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("n")  # new embedding
            await wait_idle(pilot)
            assert app.screen.STAGE == "model"
            set_value(app, "#model-path", str(ws / "model"))
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "folders", app.screen.query_one("#message").content
            set_value(app, "#source", str(ws / "photos"))
            set_value(app, "#dest", str(ws / "dataset"))
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "preprocess"
            set_value(app, "#pp-width", "64")
            set_value(app, "#pp-height", "64")
            set_value(app, "#pp-caption_action", "copy")
            await wait_idle(pilot)
            await pilot.press("ctrl+r")
            await wait_idle(pilot, timeout=120)
            assert "finished" in str(app.screen.query_one("#message").content)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "captions"
            images = sorted((ws / "dataset").glob("*.png"))
            assert len(images) == 3
            assert read_caption(images[0]) == "a cat, blue background"  # copied from the source's .txt
            # edit the first caption in place, Enter saves and moves on; then a bulk tag on every caption
            set_value(app, "#cap-input", "a cat, sitting")
            await wait_idle(pilot)
            await pilot.press("enter")
            await wait_idle(pilot)
            assert read_caption(images[0]) == "a cat, sitting"
            assert app.screen.index == 1
            await pilot.press("f2")
            await wait_idle(pilot)
            await pilot.press(*"tabby", "enter")
            await wait_idle(pilot)
            assert all(read_caption(p).startswith("tabby") for p in images)
            # the filter shows only matching captions; clearing it shows all again
            set_value(app, "#cap-filter", "sitting")
            await wait_idle(pilot)
            assert [i.image for i in app.screen.items] == [images[0]]
            assert "1 of 3 images match" in str(app.screen.query_one("#cap-count").content)
            set_value(app, "#cap-filter", "")
            await wait_idle(pilot)
            assert len(app.screen.items) == 3
            await pilot.press("escape")  # Back, then forward again: nothing lost
            await wait_idle(pilot)
            assert app.screen.STAGE == "preprocess"
            assert app.screen.query_one("#pp-width").value == "64"
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "embedding"
            set_value(app, "#emb-name", "tuicat")
            set_value(app, "#emb-init", "cat")
            set_value(app, "#emb-vectors", "2")
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "training"
            for selector, value in TRAIN_SETTINGS.items():
                if value is not None:
                    set_value(app, selector, value)
            app.screen.query_one("#tr-device").value = "cpu"
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert "4 steps" in str(app.screen.query_one(".dialog-detail").content)  # asks first
            await pilot.press("y")
            await until(pilot, lambda: getattr(app.screen, "view", None) is not None
                        and app.screen.__class__.__name__ == "MonitorScreen", 60, "the monitor")
            monitor = app.screen
            await until(pilot, lambda: monitor.view.state in ("finished", "failed"), 240, "training to finish")
            assert monitor.view.state == "finished", monitor.view.error
            assert [s for s, _ in monitor.view.losses] == [1, 2, 3, 4]
            assert monitor.view.checkpoints and monitor.view.previews
            await pilot.press("f")
            await wait_idle(pilot)
            assert app.screen.STAGE == "finish"
            run_dir = Path(app.state.run_dir)
            await pilot.press("ctrl+q")
        return run_dir

    run_dir = asyncio.run(drive())
    saved = json.loads((ws / "home" / "wizard.json").read_text())
    assert saved["name"] == "tuicat" and saved["stage"] == "finish"
    embedding = run_dir / "tuicat.safetensors"
    assert embedding.is_file()

    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(ws / "model"), local_files_only=True, safety_checker=None)
    pipe.load_textual_inversion(str(embedding), token="tuicat")
    prompt = pipe.maybe_convert_prompt("tuicat", pipe.tokenizer)  # "tuicat tuicat_1" for two vectors
    ids = pipe.tokenizer(prompt, add_special_tokens=False).input_ids
    assert len(ids) == 2  # two vectors → two added tokens
    from safetensors.torch import load_file

    vectors = next(iter(load_file(str(embedding)).values()))
    table = pipe.text_encoder.get_input_embeddings().weight
    assert torch.allclose(table[ids], vectors.to(table.dtype))


KILLED_APP = r"""
import asyncio, sys, time
sys.path.insert(0, sys.argv[1])
from tui.app import TiwizApp
from tui.state import WizardState
state = WizardState(model=sys.argv[2], source=sys.argv[3], dataset=sys.argv[3], skip_preprocess=True,
                    name="killcat", init_text="cat", vectors=1,
                    train=dict(steps=100000, width=64, height=64, save_every=5, preview_every=0, validate_every=0, auto_stop=False,
                               device="cpu"))
app = TiwizApp(state=state, save=False, runs_root=sys.argv[4], start_stage="training")
async def main():
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.5)
        await pilot.press("ctrl+n")
        deadline = time.monotonic() + 180  # never hang the suite: say where it stuck instead
        while type(app.screen).__name__ != "ConfirmModal":  # the checks before the question run in a worker
            if time.monotonic() > deadline:
                print("STUCK before the confirmation on", type(app.screen).__name__, flush=True); return
            await pilot.pause(0.2)
        await pilot.press("y")
        while not (type(app.screen).__name__ == "MonitorScreen" and app.screen.view.step >= 2):
            if time.monotonic() > deadline:
                print("STUCK waiting for the monitor on", type(app.screen).__name__, flush=True); return
            await pilot.pause(0.2)
        print("RUN", app.state.run_dir, app.screen.view.step, flush=True)
        while True:
            await pilot.pause(1)
asyncio.run(main())
"""


@pytest.mark.slow  # a wizard subprocess, a real worker, a kill and a reattach (~45 s loaded)
def test_killed_ui_leaves_training_running_and_reattaches(workspace):
    ws = workspace
    proc = subprocess.Popen([sys.executable, "-c", KILLED_APP, str(ROOT), str(ws / "model"), str(ws / "photos"),
                             str(ws / "runs")], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("RUN "), line
        run_dir = Path(line.split()[1])
        os.killpg(proc.pid, signal.SIGKILL)  # the UI dies the way a dropped SSH session kills it
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    info = inspect_run(run_dir)
    assert info.alive and info.state == "running", info  # the run never ends on its own (100000 steps)
    killed_at = info.step

    app = TiwizApp(state=WizardState(), save=False, attach=run_dir)

    async def attach():
        async with app.run_test(size=(80, 24)) as pilot:
            monitor = app.screen
            await until(pilot, lambda: monitor.view.step >= killed_at + 3, 240, "steps after the UI was killed")
            send_command(run_dir, "stop")
            await until(pilot, lambda: monitor.view.state in ("stopped", "failed", "killed"), 240, "the run to stop")
            return monitor.view

    view = asyncio.run(attach())
    assert view.state == "stopped", view.error
    # the whole history, including the steps before the kill, with no gap
    assert [s for s, _ in view.losses] == list(range(1, view.step + 1)) and view.step >= killed_at + 3
