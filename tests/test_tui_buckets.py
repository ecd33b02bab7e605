"""The wizard shows the aspect-ratio buckets (issue #15): the Captions screen the selected image's bucket (or its centre
crop), the Training screen the dataset's images per bucket, counted as core.prep.buckets assigns them, and right
for the final value when a size is typed or pasted fast."""

from __future__ import annotations

import asyncio

from PIL import Image

from core.prep.buckets import Bucketer, assign_buckets
from tests.tui_support import burst, freeze_cursor, wait_idle
from tui.app import TiwizApp
from tui.state import WizardState

# name: size; sorted by name as the captions list shows them
IMAGES = {"a-portrait.png": (900, 1200), "b-portrait.png": (600, 800), "c-landscape.png": (1200, 800),
          "d-square.png": (700, 700), "e-small.png": (300, 200), "f-tiny.png": (40, 300)}


def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, (name, size) in enumerate(IMAGES.items()):
        Image.new("RGB", size, (40 * i, 120, 200)).save(folder / name)
    (folder / "a-portrait.txt").write_text("a cat, standing", encoding="utf-8")
    return folder


def make_app(tmp_path, stage: str, train: dict | None = None) -> TiwizApp:
    state = WizardState(model=str(tmp_path / "m"), dataset=str(photos(tmp_path)), skip_preprocess=True, name="cat",
                        init_text="a cat", train=dict(train or {}))
    return TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage=stage, finder_roots=[])


def core_counts(folder, width: int, height: int, **bucket_options) -> dict[str, int]:
    """What core assigns, from sizes read here with PIL (the way the trainer's loader sees them)."""
    sizes = []
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as im:
            sizes.append((path.name, im.size))
    groups = assign_buckets(sizes, Bucketer((width, height), **bucket_options))
    return {("too small" if reso is None else f"{reso[0]}×{reso[1]}"): len(names) for reso, names in groups.items()}


def shown_counts(text: str) -> dict[str, int]:
    text = text.replace("\n", " ")  # broken into lines between buckets to fit the side panel
    assert text.startswith("buckets: "), text
    counts = {}
    for part in text[len("buckets: "):].split(" · "):
        label, n = part.rsplit(" ×", 1)
        counts[label] = int(n)
    return counts


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector).content)


def test_captions_screen_shows_each_images_bucket(tmp_path, monkeypatch):
    freeze_cursor(monkeypatch)
    app = make_app(tmp_path, "captions", train={"buckets": True})

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot, timeout=120)
            shown = {}
            for _ in IMAGES:
                name = app.screen.items[app.screen.index].image.name
                shown[name] = text_of(app, "#cap-bucket")
                await pilot.press("down")
                await wait_idle(pilot)
            return shown
    shown = asyncio.run(drive())
    assert shown == {
        "a-portrait.png": "bucket 384×512 (from 900×1200)",
        "b-portrait.png": "bucket 384×512 (from 600×800)",
        "c-landscape.png": "bucket 576×384 (from 1200×800)",
        "d-square.png": "bucket 512×512 (from 700×700)",
        "e-small.png": "bucket 256×192 (from 300×200, not upscaled)",  # its own size, cut to multiples of 64
        "f-tiny.png": "too small for training (40×300): the trainer skips it",
    }
    bucketer = Bucketer((512, 512))
    for name, size in IMAGES.items():  # the same choice as core's (the trainer's and the doctor's)
        reso = bucketer.bucket(*size)
        if bucketer.usable(reso):
            assert shown[name].startswith(f"bucket {reso[0]}×{reso[1]} ")


def test_captions_screen_without_buckets_says_centre_crop_and_follows_the_settings(tmp_path, monkeypatch):
    freeze_cursor(monkeypatch)
    app = make_app(tmp_path, "captions", train={"width": "768", "height": "640"})

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot, timeout=120)
            first = text_of(app, "#cap-bucket")
            app.state.train.update(buckets=True, bucket_no_upscale=False)  # as the Training screen stores them
            await pilot.press("down")
            await wait_idle(pilot)
            return first, text_of(app, "#cap-bucket")
    first, second = asyncio.run(drive())
    assert first == "centre crop to 768×640 (from 900×1200)"
    reso = Bucketer((768, 640), no_upscale=False).bucket(600, 800)
    assert second == f"bucket {reso[0]}×{reso[1]} (from 600×800)"


def test_training_screen_counts_buckets_as_core_assigns_them(tmp_path, monkeypatch):
    freeze_cursor(monkeypatch)
    app = make_app(tmp_path, "training")

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            line = app.screen.query_one("#tr-bucket-summary")
            hidden = not line.display
            app.screen.query_one("#tr-buckets").value = True  # the Advanced tab's checkbox
            await wait_idle(pilot)
            on = (line.display, text_of(app, "#tr-bucket-summary"))
            app.screen.query_one("#tr-bucket_min_side").value = "64"
            await wait_idle(pilot)
            low = text_of(app, "#tr-bucket-summary")
            app.screen.query_one("#tr-buckets").value = False
            await wait_idle(pilot)
            return hidden, on, low, line.display
    hidden, (shown, text), low, shown_after_off = asyncio.run(drive())
    folder = tmp_path / "photos"
    assert hidden and shown and not shown_after_off
    assert shown_counts(text) == core_counts(folder, 512, 512) == {
        "256×192": 1, "384×512": 2, "512×512": 1, "576×384": 1, "too small": 1}
    assert text.startswith("buckets: 384×512 ×2 ·")  # the largest bucket first
    assert max(len(line) for line in text.splitlines()) <= 32  # the side panel's width: no bucket cut in two
    assert shown_counts(low) == core_counts(folder, 512, 512, min_size=64)


def test_training_screen_summary_is_right_for_the_last_of_fast_typed_sizes(tmp_path, monkeypatch):
    """Keys delivered as a paste delivers them: each intermediate width starts a count (some invalid, e.g. "1"); only
    the final value's count may land."""
    freeze_cursor(monkeypatch)
    app = make_app(tmp_path, "training", train={"buckets": True})
    folder = tmp_path / "photos"

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            screen = app.screen
            first = text_of(app, "#tr-bucket-summary")
            screen.set_focus(screen.query_one("#tr-width"))
            await burst(pilot, "ctrl+u", "1", "0", "2", "4")
            wide = text_of(app, "#tr-bucket-summary")
            screen.set_focus(screen.query_one("#tr-height"))
            for key in ("ctrl+u", "2", "5", "6", "backspace", "backspace", "backspace", "1", "9", "2"):  # 256 then 192, quickly
                await pilot.press(key)
            await wait_idle(pilot)
            flat = text_of(app, "#tr-bucket-summary")
            await burst(pilot, "ctrl+u", "1", "9")  # invalid (not a multiple of 8): no count for it
            invalid = text_of(app, "#tr-bucket-summary")
            await burst(pilot, "1")  # 191: still invalid
            await burst(pilot, "backspace", "2")  # back to 192
            again = text_of(app, "#tr-bucket-summary")
            return first, wide, flat, invalid, again
    first, wide, flat, invalid, again = asyncio.run(drive())
    assert shown_counts(first) == core_counts(folder, 512, 512)
    assert shown_counts(wide) == core_counts(folder, 1024, 512)
    assert shown_counts(flat) == core_counts(folder, 1024, 192)
    assert shown_counts(flat) != shown_counts(wide)  # the test can tell the values apart
    assert invalid == "buckets: waiting for valid settings"
    assert again == flat


def test_size_cache_rereads_a_file_only_when_its_mtime_or_size_changes(tmp_path):
    import os

    from tui.bucket_scan import SizeCache

    path = tmp_path / "a.png"
    Image.new("RGB", (320, 200), (1, 2, 3)).save(path)
    cache = SizeCache()
    assert cache.size(path) == (320, 200)
    st = os.stat(path)
    path.write_bytes(b"x" * st.st_size)  # same length, not an image, and the old mtime back: served from the cache
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.size(path) == (320, 200)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: read again
    assert cache.size(path) is None
    Image.new("RGB", (64, 640)).save(path)
    assert cache.size(path) == (64, 640)
    path.unlink()
    assert cache.size(path) is None
