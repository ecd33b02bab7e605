"""The Training screen: loading a TOML takes training options only, and says what it kept."""

from __future__ import annotations

import asyncio

from core.training.config import TrainConfig
from tests.tui_support import make_photos, wait_idle
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

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            await pilot.press("ctrl+l")
            await wait_idle(pilot)
            app.screen.query_one("#prompt-input").value = str(toml)
            await pilot.press("enter")
            await wait_idle(pilot)
            assert app.screen.query_one("#tr-steps").value == "77"
            message = str(app.screen.query_one("#message").content)
            assert "training options" in message and "model" in message and "dataset" in message
            assert "name" in message
    asyncio.run(drive())
    assert (app.state.model, app.state.dataset, app.state.name, app.state.init_text) == (
        str(tmp_path / "m"), str(tmp_path / "photos"), "cat", "a cat")
    assert str(app.state.train["steps"]) == "77" and app.state.train["lr"] == "0.01"
