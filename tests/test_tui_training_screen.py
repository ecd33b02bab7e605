"""The Training screen: loading a TOML takes training options only, and says what it kept."""

from __future__ import annotations

from core.training.config import TrainConfig
from tests.tui_support import drive, make_photos, wait_idle
from tui.app import TiwizApp
from tui.state import WizardState


def training_app(tmp_path, **state):
    make_photos(tmp_path / "photos", 2)
    base = dict(model=str(tmp_path / "m"), dataset=str(tmp_path / "photos"), name="cat", init_text="a cat")
    base.update(state)
    return TiwizApp(state=WizardState(**base), save=False, runs_root=tmp_path / "runs", start_stage="training",
                    finder_roots=[])


def test_load_toml_takes_training_options_and_keeps_earlier_choices(tmp_path):
    other = TrainConfig.from_dict({"model": "/elsewhere/model", "data": "/elsewhere/data", "name": "dog",
                                   "init_text": "a dog", "steps": 77, "lr": "0.01"}, validate=False)
    toml = other.to_toml(tmp_path / "other.toml")
    app = training_app(tmp_path)

    async def body(pilot):
        await pilot.press("ctrl+l")
        await wait_idle(pilot)
        app.screen.query_one("#prompt-input").value = str(toml)
        await pilot.press("enter")
        await wait_idle(pilot)
        assert app.screen.query_one("#tr-steps").value == "77"
        message = str(app.screen.query_one("#message").content)
        assert "training options" in message and "model" in message and "dataset" in message
        assert "name" in message
    drive(app, body, (100, 30))
    assert (app.state.model, app.state.dataset, app.state.name, app.state.init_text) == (
        str(tmp_path / "m"), str(tmp_path / "photos"), "cat", "a cat")
    assert str(app.state.train["steps"]) == "77" and app.state.train["lr"] == "0.01"


def test_ctrl_n_asks_first_showing_steps_size_and_time(tmp_path):
    from tests.tui_support import recorded_events, write_recorded_run

    runs = tmp_path / "runs"
    old = write_recorded_run(runs / "old-1", recorded_events("old", steps=10))  # 2.5 it/s at 512x512, batch 1
    (old / "config.toml").write_text("width = 512\nheight = 512\nbatch_size = 1\ngrad_accum = 1\n")
    app = training_app(tmp_path, name="zxq-cat", train={"steps": "1000", "width": "256", "height": "256"})
    app.runs_root = runs

    async def body(pilot):
        await pilot.press("ctrl+n")
        await wait_idle(pilot)
        detail = str(app.screen.query_one(".dialog-detail").content)
        assert "1000 steps" in detail and "256×256" in detail
        assert "about 01:40" in detail  # 1000 steps at 2.5 it/s, a quarter of the pixels
        await pilot.press("n")
        await wait_idle(pilot)
        assert app.screen.STAGE == "training"
    drive(app, body)
    assert sorted(p.name for p in runs.iterdir()) == ["old-1"]  # nothing started


def test_training_and_embedding_screens_refuse_early(tmp_path):
    (tmp_path / "empty").mkdir()
    app = training_app(tmp_path, name="zxq-cat", dataset=str(tmp_path / "empty"))

    async def body(pilot):
        await pilot.press("ctrl+n")
        await wait_idle(pilot)
        assert app.screen.STAGE == "training"
        assert "holds no images" in str(app.screen.query_one("#message").content)
        app.state.dataset = str(tmp_path / "photos")
        app.state.name = "cat"
        app.goto("embedding")
        await wait_idle(pilot)
        await pilot.press("ctrl+n")
        await wait_idle(pilot)
        assert app.screen.STAGE == "embedding"
        assert "vocabulary" in str(app.screen.query_one("#message").content)
    drive(app, body)


def test_device_cuda_without_cuda_is_refused_before_the_worker(tmp_path):
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has CUDA")
    app = training_app(tmp_path, name="zxq-cat", train={"device": "cuda"})

    async def body(pilot):
        await pilot.press("ctrl+n")
        await wait_idle(pilot)
        await pilot.press("y")
        await wait_idle(pilot, timeout=120)
        assert app.screen.STAGE == "training"
        assert "no CUDA GPU" in str(app.screen.query_one("#message").content)
    drive(app, body)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
