"""The TUI's plain-Python parts: wizard state file, the run view folded from events, the loss plot, copy targets,
helper-subprocess errors; plus pilot checks of Back, errors as messages, and small terminals."""

from __future__ import annotations

import asyncio
import json

import pytest

from core.errors import TiwizError
from tests.tui_support import (freeze_cursor, make_photos, recorded_events, wait_idle, write_embedding,
                               write_recorded_run)
from tui.app import TiwizApp
from tui.jobs import run_jsonl
from core.runs.run_events import Started, Step
from tui.run_view import RunView, format_duration, format_rate
from tui.state import WizardState, load_state, save_state
from core.install import copy_embedding, find_targets
from tui.widgets.loss_plot import render_plot


def test_state_round_trip_and_damaged_files(tmp_path):
    path = tmp_path / "wizard.json"
    state = WizardState(stage="captions", model="/m", source="/s", dataset="/d", name="cat", vectors=3,
                        train={"steps": "100"}, preprocess={"width": 64})
    save_state(state, path)
    assert load_state(path) == state
    assert load_state(tmp_path / "missing.json") is None
    path.write_text("{not json")
    assert load_state(path) is None
    path.write_text(json.dumps({"stage": "nowhere", "vectors": "many", "name": "x", "future_field": 1}))
    loaded = load_state(path)
    assert (loaded.stage, loaded.vectors, loaded.name) == ("start", 1, "x")


def test_train_config_carries_every_stage():
    state = WizardState(model="m", dataset="d", name="n", init_text="cat", vectors=2, train={"steps": 5})
    assert state.train_config() == {"steps": 5, "model": "m", "data": "d", "name": "n", "init_text": "cat",
                                    "vectors": 2, "overwrite": False, "auto_stop": True}  # the wizard's default
    state.train["auto_stop"] = False
    assert state.train_config()["auto_stop"] is False  # the user's choice wins


def test_run_view_folds_events(tmp_path):
    events = recorded_events("cat", steps=120, max_steps=400, every=40)
    view = RunView(tmp_path)
    view.apply_all(events)
    assert (view.state, view.step, view.max_steps, view.name) == ("running", 120, 400, "cat")
    assert len(view.losses) == len(view.smoothed) == 120
    assert [c.step for c in view.checkpoints] == [40, 80, 120]
    assert view.checkpoints[0].preview == "previews/cat-40.png"
    assert view.latest_preview == (120, "previews/cat-120.png")
    assert [s for s, _ in view.val_losses] == [40, 80, 120]
    assert view.eta == pytest.approx(280 / 2.5)
    assert view.gpu_line() == "GPU 7.5/24.0 GiB · 93%"
    assert view.warnings == ["loss spike at step 50 (0.9)"]
    # the smoothed curve is an EMA of the raw one
    raw = [v for _, v in view.losses]
    assert view.smoothed[1][1] == pytest.approx(raw[0] + 0.1 * (raw[1] - raw[0]))


def test_run_view_resume_drops_unsaved_steps_and_kill_is_shown(tmp_path):
    view = RunView(tmp_path)
    view.apply_all(recorded_events("cat", steps=50, max_steps=100, every=40))
    view.apply(Started(step=40, max_steps=100, name="cat", resumed=True))  # resumed from the checkpoint
    assert view.losses[-1][0] == 40
    view.apply(Step(step=41, loss=0.1, max_steps=100))
    assert view.set_liveness("killed")
    assert view.state == "killed" and "step 41" in view.error
    assert view.eta is None


def test_formatting():
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "01:05" and format_duration(None) == "--:--"
    assert format_rate(2.5) == "2.50 it/s" and format_rate(0.25) == "4.00 s/it" and format_rate(None) == "-- it/s"


def test_loss_plot_fits_its_box():
    raw = [(i, 1.0 / i) for i in range(1, 200)]
    text = render_plot(raw, raw, [(100, 0.02)], 60, 12)
    lines = text.plain.split("\n")
    assert len(lines) == 12 and max(len(line) for line in lines) <= 60
    assert "smoothed" in lines[0] and "val 0.0200" in lines[0]
    assert any(ch for line in lines[1:-1] for ch in line if 0x2801 <= ord(ch) <= 0x28FF)
    assert "waiting" in render_plot([], [], [], 40, 8).plain


def test_copy_targets(tmp_path):
    a1111 = tmp_path / "stable-diffusion-webui" / "embeddings"
    comfy = tmp_path / "ComfyUI" / "models" / "embeddings"
    a1111.mkdir(parents=True)
    comfy.mkdir(parents=True)
    found = find_targets([tmp_path])
    assert [(t.app, t.path) for t in found] == [("A1111", a1111), ("ComfyUI", comfy)]
    _, src = write_embedding(tmp_path / "cat", name="cat")
    assert copy_embedding(src, a1111).read_bytes() == src.read_bytes()
    with pytest.raises(TiwizError, match="already exists"):
        copy_embedding(src, a1111)


def test_helper_errors_become_messages(tmp_path):
    with pytest.raises(TiwizError) as err:
        asyncio.run(run_jsonl(["preprocess", str(tmp_path / "nope"), str(tmp_path / "out"), "--jsonl"],
                              what="Preprocessing"))
    assert "Traceback" not in str(err.value) and str(err.value)


def test_back_keeps_input_errors_are_messages_and_80x24(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    freeze_cursor(monkeypatch)
    make_photos(tmp_path / "photos", 2)
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", start_stage="model",
                   finder_roots=[])

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            app.screen.query_one("#model-path").value = str(tmp_path / "no-such-model.safetensors")
            await wait_idle(pilot)
            await pilot.press("ctrl+n")
            await wait_idle(pilot)
            assert app.screen.STAGE == "model"  # refused, with a readable message
            message = str(app.screen.query_one("#message").content)
            assert "no such file" in message and "Traceback" not in message
            app.state.model = ""  # pretend a model was chosen to move on
            app.goto("folders")
            await wait_idle(pilot)
            app.screen.query_one("#source").value = "photos"
            await wait_idle(pilot)
            assert "2 images" in str(app.screen.query_one("#source-info").content)
            await pilot.press("escape")
            await wait_idle(pilot)
            await pilot.resize_terminal(60, 20)
            await wait_idle(pilot)
            app.goto("folders")
            await wait_idle(pilot)
            assert app.screen.query_one("#source").value == "photos"  # Back lost nothing
            assert app.return_code is None
    asyncio.run(drive())


def test_monitor_commands_and_detach(tmp_path, monkeypatch):
    run = write_recorded_run(tmp_path / "runs" / "cat-1", recorded_events("cat", steps=30, max_steps=100))
    app = TiwizApp(state=WizardState(), save=False, attach=run)
    app.check_liveness = False

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            await pilot.press("v")
            await wait_idle(pilot)
            assert (run / "commands").is_dir() and any((run / "commands").iterdir())
            await pilot.press("s")
            await wait_idle(pilot)
            await pilot.press("n")  # stop? no
            await wait_idle(pilot)
            await pilot.press("d")
            await wait_idle(pilot)
    asyncio.run(drive())
    assert f"tiwiz attach {run}" in app.exit_message


def test_demo_entry_fills_every_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("d")
            await wait_idle(pilot, timeout=120)
            assert app.screen.STAGE == "captions"
            assert len(app.screen.items) > 0
    asyncio.run(drive())
    from core.training.config import TrainConfig

    config = TrainConfig.from_dict(app.state.train_config())  # a complete, valid training config
    assert config.name == "demo-heart" and (tmp_path / "home" / "demo" / "shapes-world" / "model_index.json").is_file()


def _captions_app(tmp_path):
    from tests.tui_support import gradient_png

    for i in range(2):
        gradient_png(tmp_path / "ds" / f"img{i}.png", i)
    state = WizardState()
    state.dataset = str(tmp_path / "ds")
    return TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="captions", finder_roots=[])


def test_ctrl_g_cycles_the_image_mode_and_redraws_the_preview(tmp_path):
    import textual_image.widget  # noqa: F401  (loaded at start-up in a graphics terminal; this enables the modes)

    from tui.widgets.image_preview import ImagePreview

    app = _captions_app(tmp_path)

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            preview = app.screen.query_one(ImagePreview)
            assert app.image_protocol == "halfcell" and preview.thumb is not None
            seen = []
            for _ in range(3):
                await pilot.press("ctrl+g")
                await wait_idle(pilot)
                seen.append((app.image_protocol, preview._graphics is not None, preview.path.name))
            assert seen == [("tgp", True, "img0.png"), ("sixel", True, "img0.png"), ("halfcell", False, "img0.png")]
            assert preview.thumb is not None  # half-block thumbnail loaded again
    asyncio.run(drive())


def test_ctrl_g_without_graphics_support_stays_half_block(tmp_path, monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "textual_image.widget", raising=False)
    app = _captions_app(tmp_path)

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("ctrl+g")
            await wait_idle(pilot)
            assert app.image_protocol == "halfcell"
    asyncio.run(drive())


def test_f3_browses_for_a_checkpoint_or_a_diffusers_folder(tmp_path):
    models = tmp_path / "models"
    (models / "sd-diffusers").mkdir(parents=True)
    (models / "sd-diffusers" / "model_index.json").write_text("{}")
    (models / "loras").mkdir()
    (models / "v15.safetensors").write_bytes(b"not really")
    (models / "notes.txt").write_text("hidden from the browser")
    state = WizardState()
    state.model = str(models / "gone.safetensors")  # the browser opens beside it
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="model", finder_roots=[])

    async def pick(pilot, name):
        from tui.screens.model_browser import ModelTree

        await pilot.press("f3")
        await wait_idle(pilot)
        tree = app.screen.query_one(ModelTree)
        for _ in range(100):  # the tree lists its folder in a worker
            if tree.root.children:
                break
            await pilot.pause(0.05)
        nodes = {n.data.path.name: n for n in tree.root.children}
        assert set(nodes) == {"sd-diffusers", "loras", "v15.safetensors"}
        if name is None:
            await pilot.press("escape")
        else:
            tree.move_cursor(nodes[name])
            await pilot.press("enter")
        await wait_idle(pilot)

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pick(pilot, "sd-diffusers")
            assert app.screen.STAGE == "model"
            assert app.screen.query_one("#model-path").value == str((models / "sd-diffusers").resolve())
            await pick(pilot, "v15.safetensors")
            assert app.screen.query_one("#model-path").value == str((models / "v15.safetensors").resolve())
            await pick(pilot, None)  # Escape keeps the path
            assert app.screen.query_one("#model-path").value == str((models / "v15.safetensors").resolve())
            assert app.state.model == str((models / "v15.safetensors").resolve())
    asyncio.run(drive())
