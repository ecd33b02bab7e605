"""Split-oversized math against A1111's `split_pic` formula, and split crops written end to end."""

import math

import numpy as np
import pytest
from PIL import Image

from core.prep.preprocess import run_preprocess
from core.prep.options import PreprocessOptions
from core.prep.split import plan_split, should_split
from tests.preprocess_cases import photo


def a1111_split(w, h, width, height, overlap, threshold):
    """modules/textual_inversion/preprocess.py (v1.6), transcribed: (resized size, crop boxes) or None."""
    if h > w:
        ratio, inverse_xy = (w * height) / (h * width), False
    else:
        ratio, inverse_xy = (h * width) / (w * height), True
    if not (ratio < 1.0 and ratio <= threshold):
        return None
    if inverse_xy:
        from_w, from_h, to_w, to_h = h, w, height, width
    else:
        from_w, from_h, to_w, to_h = w, h, width, height
    hh = from_h * to_w // from_w
    split_count = math.ceil((hh - to_h * overlap) / (to_h * (1.0 - overlap)))
    y_step = (hh - to_h) / (split_count - 1)
    boxes = []
    for i in range(split_count):
        y = int(y_step * i)
        boxes.append((y, 0, y + to_h, to_w) if inverse_xy else (0, y, to_w, y + to_h))
    return ((hh, to_w) if inverse_xy else (to_w, hh)), boxes


SIZES = [(512, 1536), (1536, 512), (1000, 3000), (512, 1024), (600, 1000), (640, 427), (4000, 200), (333, 2001),
         (512, 512), (700, 2100), (1024, 4096), (3000, 1100)]


@pytest.mark.parametrize("target", [(512, 512), (512, 768), (768, 512), (256, 256)])
@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("threshold", [0.5, 0.8])
def test_split_plan_matches_a1111(target, overlap, threshold):
    width, height = target
    for w, h in SIZES:
        expected = a1111_split(w, h, width, height, overlap, threshold)
        assert should_split(w, h, width, height, threshold) == (expected is not None), (w, h)
        if expected:
            plan = plan_split(w, h, width, height, overlap)
            assert (plan.resized, list(plan.boxes)) == expected, (w, h)
            assert all(b[2] - b[0] == width and b[3] - b[1] == height for b in plan.boxes)
            assert max(b[3] for b in plan.boxes) <= plan.resized[1] and max(b[2] for b in plan.boxes) <= plan.resized[0]


def test_known_cases():
    plan = plan_split(512, 1536, 512, 512, 0.2)  # the documented example: 4 crops
    assert plan.resized == (512, 1536)
    assert [b[1] for b in plan.boxes] == [0, 341, 682, 1024]
    assert len(plan_split(1536, 512, 512, 512, 0.2).boxes) == 4
    assert len(plan_split(512, 1024, 512, 512, 0.2).boxes) == 3  # ceil(921.6 / 409.6)
    assert len(plan_split(512, 1536, 512, 512, 0.0).boxes) == 3
    assert should_split(512, 1024, 512, 512, 0.5) and not should_split(600, 1000, 512, 512, 0.5)
    assert not should_split(512, 512, 512, 512, 1.0)


def test_split_crops_written_from_a_real_photo(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    tall = photo("rocket").transpose(Image.ROTATE_90).resize((128, 384), Image.LANCZOS)  # 1:3 portrait
    tall.save(src / "rocket.png")
    wide = photo("coffee", (300, 150))  # ratio 0.5: splits at threshold 0.5
    wide.save(src / "coffee.png")
    photo("astronaut", (128, 128)).save(src / "square.png")
    opts = PreprocessOptions(width=128, height=128, split=True, split_threshold=0.5, split_overlap=0.2)
    report = run_preprocess(src, dest, opts, workers=1)
    outputs = {s["file"]: [o["image"] for o in s["outputs"]] for s in report.sources}
    assert outputs["rocket.png"] == ["rocket-1.png", "rocket-2.png", "rocket-3.png", "rocket-4.png"]
    assert outputs["coffee.png"] == ["coffee-1.png", "coffee-2.png", "coffee-3.png"]  # 300x150 -> 256x128, 3 crops
    assert outputs["square.png"] == ["square.png"]  # not split: default crop
    resized = np.asarray(tall, dtype=np.float64)  # already at the target width, so the crops are plain windows
    for name, (x0, y0, x1, y1) in zip(outputs["rocket.png"], plan_split(128, 384, 128, 128, 0.2).boxes):
        crop = np.asarray(Image.open(dest / name), dtype=np.float64)
        assert crop.shape == (128, 128, 3)
        assert np.abs(crop - resized[y0:y1, x0:x1]).mean() < 1.0
