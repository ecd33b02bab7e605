"""Keys typed in a burst reach the field they were typed for, Tab included, on the wizard started as `tiwiz`; a number
field keeps what was typed and says what is wrong instead of dropping characters (issue 25 item 4)."""

from __future__ import annotations

import asyncio

import pytest

from tests.tui_support import burst, console_app, console_home, continue_saved, make_photos, message_text
from tui.state import WizardState


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = console_home(tmp_path, monkeypatch)
    make_photos(home / "photos", 2)
    (home / "model").mkdir()
    return home


def saved_at(home, stage: str) -> WizardState:
    return WizardState(stage=stage, model=str(home / "model"), source=str(home / "photos"),
                       dataset=str(home / "photos"), skip_preprocess=True, name="zxq-cat", init_text="cat")


def test_tab_in_a_burst_moves_to_the_next_embedding_field(home):
    app = console_app(saved=saved_at(home, "embedding"))

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await continue_saved(pilot, "embedding")
            assert app.focused.id == "emb-name"
            await burst(pilot, "ctrl+u", *"zxq-cup", "tab", "ctrl+u", *"cup", "tab", "ctrl+u", "3")
            values = {i: app.screen.query_one(f"#emb-{i}").value for i in ("name", "init", "vectors")}
            assert values == {"name": "zxq-cup", "init": "cup", "vectors": "3"}
            assert (app.state.name, app.state.init_text, app.state.vectors) == ("zxq-cup", "cup", 3)
            await burst(pilot, "shift+tab", "ctrl+u", *"dog")  # back one field, inside the same burst
            assert app.screen.query_one("#emb-init").value == "dog"
    asyncio.run(drive())


def test_tab_in_a_burst_on_training_and_a_number_field_keeps_what_was_typed(home):
    app = console_app(saved=saved_at(home, "training"))

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await continue_saved(pilot, "training")
            assert app.focused.id == "tr-steps"
            await burst(pilot, "ctrl+u", *"60", "tab", "ctrl+u", *"0.01")
            assert app.screen.query_one("#tr-steps").value == "60"
            assert app.screen.query_one("#tr-lr").value == "0.01"
            assert (app.state.train["steps"], app.state.train["lr"]) == ("60", "0.01")
            await burst(pilot, "shift+tab", "ctrl+u", *"0.01")  # not a whole number: kept, marked, said
            steps = app.screen.query_one("#tr-steps")
            assert steps.value == "0.01" and steps.has_class("-invalid")
            assert "steps" in message_text(app).lower() and "whole number" in message_text(app)
            await pilot.press("ctrl+n")  # refused while it is wrong
            await pilot.pause()
            assert getattr(app.screen, "STAGE", None) == "training" and len(app.screen_stack) == 2
    asyncio.run(drive())


def test_a_refused_character_is_said_not_dropped_silently(home):
    app = console_app(saved=saved_at(home, "embedding"))

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await continue_saved(pilot, "embedding")
            await burst(pilot, "tab", "tab", "ctrl+u", "4", "x")  # vectors per token: digits only
            assert app.screen.query_one("#emb-vectors").value == "4"
            assert "x" in message_text(app) and "Vectors" in message_text(app)
    asyncio.run(drive())
