"""Keys arriving in a burst (a paste, a fast typist, a slow machine) reach the widget they were meant for, in order,
and never save text into the wrong caption."""

from __future__ import annotations

from tests.tui_support import burst, drive, gradient_png, make_photos, wait_idle
from tui.app import TiwizApp
from tui.state import WizardState

CAPTIONS = {"astro": "an astronaut", "camera": "a camera photo", "dog": "a dog", "ember": "embers glowing"}


def captions_app(tmp_path):
    ds = tmp_path / "ds"
    for i, (stem, text) in enumerate(CAPTIONS.items()):
        gradient_png(ds / f"{stem}.png", i)
        (ds / f"{stem}.txt").write_text(text)
    state = WizardState(dataset=str(ds))
    return ds, TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="captions", finder_roots=[])


def on_disk(ds):
    return {p.stem: p.read_text() for p in sorted(ds.glob("*.txt"))}


def test_filter_typed_right_after_ctrl_f_filters_and_saves_nothing(tmp_path):
    ds, app = captions_app(tmp_path)

    async def body(pilot):
        await pilot.press("down")  # the second image, camera
        await burst(pilot, "ctrl+f", *"astro")
        screen = app.screen
        assert screen.query_one("#cap-filter").value == "astro"
        assert [i.image.stem for i in screen.items] == ["astro"]
        assert screen.query_one("#cap-input").value == "an astronaut"
        await burst(pilot, "enter", "down", "escape")
    drive(app, body, (100, 30))
    assert app.return_code is None  # no IndexError from a stale highlight
    assert on_disk(ds) == CAPTIONS


def test_filter_shrinking_the_list_mid_burst_does_not_crash(tmp_path):
    ds, app = captions_app(tmp_path)

    async def body(pilot):
        await pilot.press("down", "down", "down")
        await burst(pilot, "ctrl+f", *"em", "backspace", "backspace", *"dog")
        assert [i.image.stem for i in app.screen.items] == ["dog"]
        # a highlight from the list as it was before the filter, arriving late
        from textual.widgets import OptionList
        from textual.widgets.option_list import Option

        menu = app.screen.query_one("#cap-list", OptionList)
        menu.post_message(OptionList.OptionHighlighted(menu, Option("ember", id="ember.png"), 3))
        await wait_idle(pilot)
        assert app.screen.query_one("#cap-input").value == "a dog"
    drive(app, body, (100, 30))
    assert app.return_code is None
    assert on_disk(ds) == CAPTIONS


def test_caption_typed_after_down_goes_to_the_next_image(tmp_path):
    ds, app = captions_app(tmp_path)

    async def body(pilot):
        await burst(pilot, "ctrl+u", *"one", "down", "ctrl+u", *"two", "enter")
    drive(app, body, (100, 30))
    assert on_disk(ds) == dict(CAPTIONS, astro="one", camera="two")


def test_ctrl_u_then_digits_in_a_numeric_field(tmp_path):
    make_photos(tmp_path / "photos", 2)
    state = WizardState(model=str(tmp_path / "m"), dataset=str(tmp_path / "photos"), name="cat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="training", finder_roots=[])

    async def body(pilot):
        assert app.focused.id == "tr-steps"
        await burst(pilot, "ctrl+u", *"512", "left", "backspace", "9")
        assert app.screen.query_one("#tr-steps").value == "592"
        assert app.state.train["steps"] == "592"
    drive(app, body, (100, 30))
