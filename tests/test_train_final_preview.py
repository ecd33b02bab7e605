"""A finished run previews step 0 (the init vectors, before the first step) and its last step (even off the preview
schedule), and writes previews/sheet.png with every preview labelled by step."""

from __future__ import annotations

import pytest
from PIL import Image

from core.events import ListSink
from core.training.contact_sheet import preview_files, write_contact_sheet
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_last_step_preview_and_contact_sheet(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    sink = ListSink()
    cfg = tiny_config(tiny_model_dir, data, steps=3, preview_every=2, preview_steps=1)
    Trainer(cfg, tmp_path / "out", sink).run()
    previews = tmp_path / "out" / "previews"
    assert [step for step, _ in preview_files(previews, "tcat")] == [0, 2, 3]
    kinds = [e["type"] for e in sink.events]
    assert kinds.index("finished") > max(i for i, k in enumerate(kinds) if k == "preview")
    sheet = Image.open(previews / "sheet.png")
    assert sheet.width >= 2 * 64 and sheet.height >= 64


def test_sheet_orders_by_step_and_ignores_other_files(tmp_path):
    for step, colour in ((10, "red"), (2, "blue"), (100, "green")):
        Image.new("RGB", (64, 48), colour).save(tmp_path / f"cat-{step}.png")
    Image.new("RGB", (64, 48), "white").save(tmp_path / "dog-5.png")
    assert [s for s, _ in preview_files(tmp_path, "cat")] == [2, 10, 100]
    sheet = Image.open(write_contact_sheet(tmp_path, "cat"))
    assert sheet.size == (2 * 64, 2 * (48 + 18))
    assert sheet.getpixel((32, 20)) == (0, 0, 255)  # step 2 first
    assert write_contact_sheet(tmp_path / "nothing-here", "cat") is None
