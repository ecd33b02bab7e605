"""Keys typed in a burst reach the field they were typed for, Tab included, on the wizard started as `tiwiz`; a number
field keeps what was typed and says what is wrong instead of dropping characters (issue 25 item 4)."""

from __future__ import annotations

from tests.tui_support import burst, console_app, continue_saved, drive, message_text
from tui.state import WizardState


def saved_at(home, stage: str) -> WizardState:
    return WizardState(stage=stage, model=str(home / "model"), source=str(home / "photos"),
                       dataset=str(home / "photos"), skip_preprocess=True, name="zxq-cat", init_text="cat")


def test_tab_in_a_burst_moves_to_the_next_embedding_field(wizard_home):
    app = console_app(saved=saved_at(wizard_home, "embedding"))

    async def body(pilot):
        await continue_saved(pilot, "embedding")
        assert app.focused.id == "emb-name"
        await burst(pilot, "ctrl+u", *"zxq-cup", "tab", "ctrl+u", *"cup", "tab", "ctrl+u", "3")
        values = {i: app.screen.query_one(f"#emb-{i}").value for i in ("name", "init", "vectors")}
        assert values == {"name": "zxq-cup", "init": "cup", "vectors": "3"}
        assert (app.state.name, app.state.init_text, app.state.vectors) == ("zxq-cup", "cup", 3)
        await burst(pilot, "shift+tab", "ctrl+u", *"dog")  # back one field, inside the same burst
        assert app.screen.query_one("#emb-init").value == "dog"
    drive(app, body)


def test_tab_in_a_burst_on_training_and_a_number_field_keeps_what_was_typed(wizard_home):
    app = console_app(saved=saved_at(wizard_home, "training"))

    async def body(pilot):
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
    drive(app, body)


def test_a_refused_character_is_said_not_dropped_silently(wizard_home):
    app = console_app(saved=saved_at(wizard_home, "embedding"))

    async def body(pilot):
        await continue_saved(pilot, "embedding")
        await burst(pilot, "tab", "tab", "ctrl+u", "4", "x")  # vectors per token: digits only
        assert app.screen.query_one("#emb-vectors").value == "4"
        assert "x" in message_text(app) and "Vectors" in message_text(app)
    drive(app, body)
