"""The Captions screen writes a caption file only when the user edits one (issue 25, items 2 and 3).

The app is started the way the `tiwiz` console script starts it (with the wizard state a previous session saved),
then the user picks "Continue" on the Start screen; keys arrive in bursts."""

from __future__ import annotations

import asyncio

from tests.tui_support import burst, gradient_png, wait_idle


def console_app(monkeypatch, tmp_path, state: dict, argv: list[str] | None = None):
    """The TiwizApp that `tiwiz ARGV` builds (tests/tui_support.py), in a user's shell of its own, with `state` as
    the wizard state a previous session left."""
    from tests import tui_support
    from tui.state import WizardState

    tui_support.console_home(tmp_path, monkeypatch)
    return tui_support.console_app(argv, saved=WizardState.from_dict(state))


async def continue_saved(pilot) -> None:
    """On the Start screen: Continue, which opens the saved stage."""
    from tests import tui_support

    await tui_support.continue_saved(pilot, pilot.app.saved_state.stage)


def photo_folder(tmp_path, captions: dict[str, str]) -> tuple:
    """Images named like a user's photos; `captions` gives the ones that have a caption file."""
    ds = tmp_path / "photos"
    stems = ["00012-cat_on_a_mat", "dog_in_snow", "red_car", "x-tree"]
    for i, stem in enumerate(stems):
        gradient_png(ds / f"{stem}.png", i)
    for stem, text in captions.items():
        (ds / f"{stem}.txt").write_text(text, encoding="utf-8")
    return ds, stems


def files(ds) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(ds.glob("*.txt"))}


def state_for(ds) -> dict:
    return {"stage": "captions", "dataset": str(ds), "source": str(ds), "skip_preprocess": True}


def test_browsing_writes_no_caption_file(monkeypatch, tmp_path):
    ds, stems = photo_folder(tmp_path, {"red_car": "a red car"})
    before = files(ds)
    app = console_app(monkeypatch, tmp_path, state_for(ds))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            assert type(app.screen).__name__ == "CaptionsScreen"
            await burst(pilot, "down", "down", "down", "up", "up", "up", "enter", "enter", "pagedown", "pageup")
            await burst(pilot, "ctrl+f", *"dog", "enter", "ctrl+f", "ctrl+u", "enter", "down")
            await burst(pilot, "escape")  # Back: leaving the screen saves only edits
            await wait_idle(pilot)
    asyncio.run(drive())
    assert files(ds) == before


def test_typing_a_caption_writes_it_and_clearing_a_new_one_writes_nothing(monkeypatch, tmp_path):
    ds, stems = photo_folder(tmp_path, {})
    app = console_app(monkeypatch, tmp_path, state_for(ds))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            # first image: typed, then erased before leaving (no edit in the end); second image: typed
            await burst(pilot, *"abc", "ctrl+u", "down", *"a dog", "down")
    asyncio.run(drive())
    assert files(ds) == {"dog_in_snow.txt": "a dog"}


def test_bulk_add_then_remove_keeps_the_file_name_caption(monkeypatch, tmp_path):
    ds, stems = photo_folder(tmp_path, {"red_car": "a red car, street"})
    app = console_app(monkeypatch, tmp_path, state_for(ds))
    questions = []

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            await burst(pilot, "f2")
            questions.append(str(app.screen.query_one("#cap-bulk-label").content))
            await burst(pilot, *"zxq", "enter")
            await wait_idle(pilot)
            added = files(ds)
            await burst(pilot, "f3", *"zxq", "enter")
            await wait_idle(pilot)
            return added
    added = asyncio.run(drive())
    from core.prep.captions import training_caption

    # the add said what happens to the images without a caption file
    assert "3 images have no caption file" in questions[0]
    assert "file name" in questions[0]
    assert added["00012-cat_on_a_mat.txt"] == "zxq, cat on a mat"
    assert added["red_car.txt"] == "zxq, a red car, street"
    # the round trip gives every image the caption the trainer used before it
    assert {s: training_caption(ds / f"{s}.png") for s in stems} == {
        "00012-cat_on_a_mat": "cat on a mat", "dog_in_snow": "dog in snow", "red_car": "a red car, street",
        "x-tree": "x-tree"}
    assert all(p.stat().st_size > 0 for p in ds.glob("*.txt"))


def test_bulk_remove_on_images_without_caption_files_writes_nothing(monkeypatch, tmp_path):
    ds, stems = photo_folder(tmp_path, {"red_car": "a red car, street"})
    app = console_app(monkeypatch, tmp_path, state_for(ds))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            await burst(pilot, "f3", *"street", "enter")
            await wait_idle(pilot)
    asyncio.run(drive())
    assert files(ds) == {"red_car.txt": "a red car"}


def test_no_stale_doctor_finding_after_a_caption_is_written(monkeypatch, tmp_path):
    """Issue 25 item 8: the missing-caption finding of an image goes as soon as its caption is written."""
    ds, stems = photo_folder(tmp_path, {"red_car": "a red car"})
    app = console_app(monkeypatch, tmp_path, state_for(ds))

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            screen = app.screen
            first = str(screen.query_one("#cap-findings").content)
            count = str(screen.query_one("#cap-count").content)
            await burst(pilot, *"a cat on a mat", "down", "up")
            return first, count, str(screen.query_one("#cap-findings").content), \
                str(screen.query_one("#cap-count").content), screen.all_findings_text()
    first, count, after, count_after, listed = asyncio.run(drive())
    assert "no caption file" in first
    assert "no caption file" not in after
    assert "00012-cat_on_a_mat.png has no caption" not in listed and "dog_in_snow.png has no caption" in listed
    n = int(count.split("doctor: ")[1].split()[0])
    assert f"doctor: {n - 1} finding" in count_after


def test_caption_field_and_missing_file_note_fit_80x24_and_60x20(monkeypatch, tmp_path):
    """Issue 25 item 18: nothing the caption field says is cut at 80x24 or 60x20."""
    from tests.test_tui_preprocess_tagger import screen_text

    ds, stems = photo_folder(tmp_path, {"red_car": "a red car"})
    app = console_app(monkeypatch, tmp_path, state_for(ds))
    shown = {}

    def region_text(text: str, region) -> str:
        lines = text.splitlines()[region.y:region.y + region.height]
        return " ".join(" ".join(line[region.x:region.x + region.width].split()) for line in lines).strip()

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await continue_saved(pilot)
            for size in ((80, 24), (60, 20)):
                await pilot.resize_terminal(*size)
                await wait_idle(pilot)
                text = screen_text(app)
                shown[size] = (region_text(text, app.screen.query_one("#cap-input").region),
                               region_text(text, app.screen.query_one("#cap-tokens").region))
    asyncio.run(drive())
    for size, (field, note) in shown.items():
        assert "no caption file yet" in field, size
        assert note == "No caption file: the trainer uses the file name, “cat on a mat”.", size
