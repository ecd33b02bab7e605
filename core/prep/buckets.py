"""Aspect-ratio buckets with kohya-ss/sd-scripts' semantics (`--enable_bucket`, `--min_bucket_reso`,
`--max_bucket_reso`, `--bucket_reso_steps 64`, `--bucket_no_upscale`), so portraits and landscapes are trained whole
instead of centre-cropped to a square. Torch-free: the doctor, the wizard and the trainer share it.

- With upscaling allowed, the buckets are fixed: the square of the training area, plus for every width from min_side
  to max_side (step 64) the largest height (a multiple of 64, at most max_side) whose area fits width x height, and
  its transpose. An image goes to the bucket of the nearest aspect ratio (its own size if that is a bucket), is
  resized so it covers the bucket, and is centre-cropped to it.
- With no upscale (our default), an image larger than the training area is shrunk to that area (keeping its aspect;
  the side rounded to a multiple of 64 that keeps the aspect best), an image within it keeps its size; the bucket is
  then that size rounded down to multiples of 64, and the crop is centred. Small images are never upscaled.

Images of different buckets never share a batch (`TrainDataset.epoch_batches` groups by size).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

STEP = 64
K = TypeVar("K", bound=Hashable)


def make_bucket_resolutions(max_reso: tuple[int, int], min_size: int = 256, max_size: int = 1024,
                            divisible: int = STEP) -> list[tuple[int, int]]:
    """kohya's predefined buckets for a training size `max_reso` = (width, height): sorted (width, height) pairs."""
    max_width, max_height = max_reso
    max_area = max_width * max_height
    resos = set()
    width = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((width, width))
    width = min_size
    while width <= max_size:
        height = min(max_size, int((max_area // width) // divisible) * divisible)
        if height >= min_size:
            resos.add((width, height))
            resos.add((height, width))
        width += divisible
    return sorted(resos)


@dataclass
class Bucketer:
    """Chooses each image's bucket. `max_reso` is the training (width, height); its area is the bucket area."""

    max_reso: tuple[int, int]
    min_size: int = 256
    max_size: int = 1024
    no_upscale: bool = True
    steps: int = STEP
    predefined: list[tuple[int, int]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        # kohya asserts min_size <= each side <= max_size; we widen the range to the training size instead
        self.min_size = min(self.min_size, *self.max_reso)
        self.max_size = max(self.max_size, *self.max_reso)
        self.max_area = self.max_reso[0] * self.max_reso[1]
        if not self.no_upscale:
            self.predefined = make_bucket_resolutions(self.max_reso, self.min_size, self.max_size, self.steps)

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def select(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int], float]:
        """(bucket (w, h), resized size (w, h) before the centre crop, aspect-ratio error of the bucket)."""
        aspect = width / height
        if not self.no_upscale:
            reso = (width, height)
            if reso not in self.predefined:
                errors = [abs(w / h - aspect) for w, h in self.predefined]
                reso = self.predefined[errors.index(min(errors))]  # first of equals, like numpy's argmin
            if aspect > reso[0] / reso[1]:  # wider than the bucket: match the height
                scale = reso[1] / height
            else:
                scale = reso[0] / width
            resized = (int(width * scale + 0.5), int(height * scale + 0.5))
        else:
            if width * height > self.max_area:
                rw = math.sqrt(self.max_area * aspect)
                rh = self.max_area / rw
                bw = self._round(rw)
                bh_in_w = self._round(bw / aspect)
                bh = self._round(rh)
                bw_in_h = self._round(bh * aspect)
                ar_w = bw / bh_in_w if bh_in_w else math.inf
                ar_h = bw_in_h / bh if bh else math.inf
                if abs(ar_w - aspect) < abs(ar_h - aspect):
                    resized = (bw, int(bw / aspect + 0.5))
                else:
                    resized = (int(bh * aspect + 0.5), bh)
            else:
                resized = (width, height)
            reso = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
        return reso, resized, reso[0] / reso[1] - aspect if reso[1] else math.inf

    def bucket(self, width: int, height: int) -> tuple[int, int]:
        return self.select(width, height)[0]

    def usable(self, reso: tuple[int, int]) -> bool:
        """Whether a bucket can be trained: with no upscaling an image with a side under 64 px gets a side-0 bucket
        and is skipped."""
        return reso[0] >= self.steps and reso[1] >= self.steps


def image_bucket(bucketer: Bucketer, size: tuple[int, int]) -> tuple[int, int] | None:
    """The bucket (w, h) the trainer puts an image of `size` (w, h, after EXIF orientation) in; None when it is too
    small for any bucket (the trainer skips it)."""
    reso = bucketer.bucket(*size)
    return reso if bucketer.usable(reso) else None


def assign_buckets(sizes: Iterable[tuple[K, tuple[int, int]]], bucketer: Bucketer) -> dict[tuple[int, int] | None, list[K]]:
    """Group (key, size) pairs by `image_bucket`: {bucket: keys in input order}, buckets sorted, None (too small for any
    bucket) last. The doctor (`tiwiz doctor --buckets`) and the wizard both list buckets through this."""
    groups: dict[tuple[int, int] | None, list[K]] = {}
    for key, size in sizes:
        groups.setdefault(image_bucket(bucketer, size), []).append(key)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or (0, 0))))


class Fit(NamedTuple):
    """How one image is brought to its training size: kind is "bucket", "crop" (centre crop), "stretch", "none"
    (its own size, sides cut to multiples of 8) or "skip" (too small: the trainer skips it)."""

    kind: str
    size: tuple[int, int] | None


def image_fit(config, size: tuple[int, int]) -> Fit:
    """The training size of an image of `size` under a TrainConfig's (or anything with its fields) buckets, bucket
    sides, width, height and resize mode; as `core.training.dataset.build_dataset` resizes it."""
    if config.buckets:
        reso = image_bucket(bucketer_for(config), size)
        return Fit("bucket", reso) if reso else Fit("skip", None)
    if config.resize == "none":
        w8, h8 = size[0] // 8 * 8, size[1] // 8 * 8
        return Fit("none", (w8, h8)) if w8 >= 8 and h8 >= 8 else Fit("skip", None)
    return Fit(config.resize, (config.width, config.height))


def header_size(path: str | os.PathLike) -> tuple[int, int]:
    """An image's (width, height) as the trainer sees it (EXIF orientation applied), from its header alone: nothing is
    decoded. Raises OSError (or PIL's errors) for a file that is not an image."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        try:
            orientation = im.getexif().get(0x0112, 1)
        except Exception:  # a broken EXIF block: the loader ignores it too
            orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def crop_box(resized: tuple[int, int], reso: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centred (left, top, right, bottom) crop of a `resized` image to its bucket `reso` (kohya's trim)."""
    left = (resized[0] - reso[0]) // 2 if resized[0] > reso[0] else 0
    top = (resized[1] - reso[1]) // 2 if resized[1] > reso[1] else 0
    return left, top, left + reso[0], top + reso[1]


def resize_to_bucket(im, bucketer: Bucketer):
    """(the PIL image resized and centre-cropped to its bucket, the crop's (left, top) in the resized image). Raises
    ValueError for an image too small for any bucket (a side under 64 px with no upscaling)."""
    from PIL import Image

    reso, resized, _ = bucketer.select(im.width, im.height)
    if not bucketer.usable(reso):
        raise ValueError(f"image is {im.width}x{im.height}; with bucket_no_upscale a side needs at least "
                         f"{bucketer.steps} px")
    if resized != im.size:
        im = im.resize(resized, Image.LANCZOS)
    box = crop_box(resized, reso)
    return im.crop(box), (box[0], box[1])


def bucketer_for(config) -> Bucketer:
    """The Bucketer of a TrainConfig (or anything with its bucket fields, width and height)."""
    return Bucketer((config.width, config.height), config.bucket_min_side, config.bucket_max_side,
                    config.bucket_no_upscale)
