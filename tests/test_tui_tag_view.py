"""The Captions screen's tag view (issue 20): every tag with its count, sortable; find images by tag; add, remove and
rename a tag on every image or on the filtered ones, in a worker, with keys arriving at paste speed."""

from __future__ import annotations

import asyncio
import threading

from core.prep.captions import CaptionSet
from tests.test_tui_captions_writes import console_app, continue_saved
from tests.tui_support import burst, gradient_png, wait_idle

CAPTIONS = {
    "a": "1girl, solo, blue hair, smile",
    "b": "1girl, solo, red hair",
    "c": "1girl, blue hair, outdoors, smile",
    "d": "1boy, solo, blue hair",
}


def tagged_folder(tmp_path):
    ds = tmp_path / "ds"
    for i, (stem, text) in enumerate(CAPTIONS.items()):
        gradient_png(ds / f"{stem}.png", i)
        (ds / f"{stem}.txt").write_text(text, encoding="utf-8")
    return ds


def on_disk(ds) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(ds.glob("*.txt"))}


def rows(app) -> list[str]:
    tags = app.screen.query_one("#cap-tags")
    return [" ".join(str(tags.get_option_at_index(i).prompt).split()) for i in range(tags.option_count)]


def run(monkeypatch, tmp_path, steps):
    ds = tagged_folder(tmp_path)
    app = console_app(monkeypatch, tmp_path, {"stage": "captions", "dataset": str(ds), "skip_preprocess": True,
                                              "model": "m"})
    seen = {}

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            await steps(pilot, app, seen)
    asyncio.run(drive())
    return ds, seen


def test_tag_counts_sorted_by_count_then_by_name(monkeypatch, tmp_path):
    async def steps(pilot, app, seen):
        await burst(pilot, "f6")
        seen["count"] = rows(app)
        seen["header"] = str(app.screen.query_one("#cap-count").content)
        await burst(pilot, "s")
        seen["name"] = rows(app)

    _, seen = run(monkeypatch, tmp_path, steps)
    assert seen["count"] == ["3 1girl", "3 blue hair", "3 solo", "2 smile", "1 1boy", "1 outdoors", "1 red hair"]
    assert seen["name"] == ["1 1boy", "3 1girl", "3 blue hair", "1 outdoors", "1 red hair", "2 smile", "3 solo"]
    assert seen["header"].startswith("7 tags")


def test_find_images_by_tag(monkeypatch, tmp_path):
    async def steps(pilot, app, seen):
        await burst(pilot, "f6", "down", "down", "enter")  # the third tag by count: solo
        seen["filter"] = app.screen.query_one("#cap-filter").value
        seen["images"] = [i.image.stem for i in app.screen.items]
        await burst(pilot, "ctrl+f", "ctrl+u", *"tag:smile", "enter")
        seen["typed"] = [i.image.stem for i in app.screen.items]

    ds, seen = run(monkeypatch, tmp_path, steps)
    assert seen["filter"] == "tag:solo" and seen["images"] == ["a", "b", "d"]
    assert seen["typed"] == ["a", "c"]
    assert on_disk(ds) == CAPTIONS


def test_bulk_add_remove_rename_at_paste_speed(monkeypatch, tmp_path):
    threads = []
    real = CaptionSet._edit_tags

    def recorded(self, *args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CaptionSet, "_edit_tags", recorded)

    async def steps(pilot, app, seen):
        # on every image: add at the start; the keys after f2 go to the tag field, even in one burst
        await burst(pilot, "f2", *"zxq", "enter")
        await wait_idle(pilot)
        seen["add"] = on_disk(app.screen.caption_set.folder)
        # in the tag view, f4 starts from the highlighted tag (1girl, the second most used now): rename it
        await burst(pilot, "f6", "down", "f4")
        seen["prefilled"] = app.screen.query_one("#cap-bulk").value
        await burst(pilot, *"girl", "enter")
        await wait_idle(pilot)
        seen["rename"] = on_disk(app.screen.caption_set.folder)
        seen["rows"] = rows(app)
        # on the filtered images only: remove `smile` from those with blue hair... and outdoors
        await burst(pilot, "f6", "ctrl+f", *"tag:outdoors", "enter", "f3", *"smile", "enter")
        await wait_idle(pilot)
        seen["remove"] = on_disk(app.screen.caption_set.folder)
        seen["message"] = str(app.screen.query_one("#message").content)
        # Esc closes the field and edits nothing
        await burst(pilot, "f3", *"solo", "escape")
        await wait_idle(pilot)
        seen["escape"] = on_disk(app.screen.caption_set.folder)

    ds, seen = run(monkeypatch, tmp_path, steps)
    assert seen["add"] == {k: f"zxq, {v}" for k, v in CAPTIONS.items()}
    assert seen["prefilled"] == "1girl => "
    assert seen["rename"]["a"] == "zxq, girl, solo, blue hair, smile"
    assert seen["rename"]["d"] == "zxq, 1boy, solo, blue hair"
    assert "3 girl" in seen["rows"] and not any(r.endswith(" 1girl") for r in seen["rows"])
    assert seen["remove"]["c"] == "zxq, girl, blue hair, outdoors"
    assert seen["remove"]["a"] == "zxq, girl, solo, blue hair, smile"  # not shown by the filter: untouched
    assert "1 caption file changed" in seen["message"]
    assert seen["escape"] == seen["remove"]
    assert threads and not any(threads)  # every bulk edit ran in a worker
