"""What the wizard shows reads plainly (issue 25 items 15, 17): a checkbox that is off draws an empty box, help names
no file of ours, and the monitor explains its checkpoint marks."""

from __future__ import annotations

import re


from tests.tui_support import burst, console_app, continue_saved, drive, recorded_events, until, write_recorded_run
from tui.state import WizardState


def test_a_checkbox_that_is_off_draws_an_empty_box(wizard_home):
    saved = WizardState(stage="folders", model=str(wizard_home / "model"), source=str(wizard_home / "photos"))
    app = console_app(saved=saved)

    async def body(pilot):
        await continue_saved(pilot, "folders")
        box = app.screen.query_one("#skip")
        assert not box.value and "X" not in str(box.render())
        box.focus()
        await burst(pilot, "space")
        assert box.value and "X" in str(box.render())
    drive(app, body)


FILE_OF_OURS = re.compile(r"\bbench/|RESULTS\.md|\b[\w/]+\.py\b")


def test_option_help_names_no_file_of_ours():
    from core.prep.options import PreprocessOptions
    from core.training.config import TrainConfig

    helps = {f.name: f.help for f in TrainConfig.field_specs()}
    helps.update({f.name: f.help for f in PreprocessOptions.field_specs()})
    assert len(helps) > 40
    assert {name: text for name, text in helps.items() if FILE_OF_OURS.search(text)} == {}


def test_the_monitor_explains_its_checkpoint_marks(wizard_home):
    run = write_recorded_run(wizard_home / "runs" / "cat-1", recorded_events("cat", steps=80, max_steps=400), state="running")
    app = console_app(["--attach", str(run)])
    app.check_liveness = False

    async def body(pilot):
        await until(pilot, lambda: app.screen.view.step == 80, 30, "the history")
        await pilot.pause(0.3)
        legend = str(app.screen.query_one("#mon-marks").render())
        assert "▣ preview" in legend
    drive(app, body)
