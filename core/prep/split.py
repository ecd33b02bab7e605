"""A1111's "split oversized images" math (modules/textual_inversion/preprocess.py `split_pic`), kept exact.

For a portrait image the ratio is (w·H)/(h·W); otherwise the axes swap. An image splits iff ratio < 1 and
ratio <= threshold. Its short side is resized to the target, then n = ceil((L − T·ov)/(T·(1−ov))) crops of
length T are taken along the long side L at offsets int(i·(L−T)/(n−1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class SplitPlan:
    resized: tuple[int, int]  # (w, h) the image is resized to before cropping
    boxes: tuple[tuple[int, int, int, int], ...]  # crop boxes in the resized image


def split_ratio(w: int, h: int, width: int, height: int) -> tuple[float, bool]:
    """(ratio, inverse_xy) exactly as A1111: portrait compares heights, anything else compares widths."""
    if h > w:
        return (w * height) / (h * width), False
    return (h * width) / (w * height), True


def should_split(w: int, h: int, width: int, height: int, threshold: float) -> bool:
    ratio, _ = split_ratio(w, h, width, height)
    return ratio < 1.0 and ratio <= threshold


def plan_split(w: int, h: int, width: int, height: int, overlap: float) -> SplitPlan:
    _, inverse_xy = split_ratio(w, h, width, height)
    overlap = max(0.0, min(0.9, overlap))
    if inverse_xy:
        from_w, from_h, to_w, to_h = h, w, height, width
    else:
        from_w, from_h, to_w, to_h = w, h, width, height
    long_len = from_h * to_w // from_w
    count = math.ceil((long_len - to_h * overlap) / (to_h * (1.0 - overlap)))
    # A1111 divides by (count - 1); when integer rounding leaves exactly one crop it would divide by zero.
    offsets = [0] if count <= 1 else [int((long_len - to_h) / (count - 1) * i) for i in range(count)]
    if inverse_xy:
        return SplitPlan((long_len, to_w), tuple((y, 0, y + to_h, to_w) for y in offsets))
    return SplitPlan((to_w, long_len), tuple((0, y, to_w, y + to_h) for y in offsets))


def split_image(img: Image.Image, width: int, height: int, overlap: float) -> list[Image.Image]:
    plan = plan_split(img.width, img.height, width, height, overlap)
    resized = img.resize(plan.resized, Image.LANCZOS, reducing_gap=3.0)
    return [resized.crop(box) for box in plan.boxes]
