"""Image sizes for the wizard's bucket lines (Captions: the selected image's bucket; Training: the dataset's buckets).

Sizes come from the image headers (`core.prep.buckets.header_size`: nothing is decoded), are read only in the
screens' thread workers, and are cached per file by (path, mtime, size), so rescans after an edit of the width or
the bucket sides only stat the files. The bucket assignment itself is `core.prep.buckets` (the doctor's)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from core.prep.buckets import Fit, assign_buckets, bucketer_for, header_size, image_fit

Size = tuple[int, int]
BUCKET_FIELDS = ("width", "height", "resize", "buckets", "bucket_min_side", "bucket_max_side", "bucket_no_upscale")
SUMMARY_BUCKETS = 6  # the Training screen's line lists this many buckets, then "+N more"


class SizeCache:
    """(width, height) per image file, None for a file that is not a readable image; thread-safe."""

    def __init__(self) -> None:
        self._sizes: dict[str, tuple[int, int, Size | None]] = {}
        self._lock = threading.Lock()

    def size(self, path: str | os.PathLike) -> Size | None:
        key = os.path.abspath(path)
        try:
            st = os.stat(key)
        except OSError:
            return None
        with self._lock:
            hit = self._sizes.get(key)
        if hit is not None and hit[:2] == (st.st_mtime_ns, st.st_size):
            return hit[2]
        try:
            size = header_size(key)
        except Exception:  # not an image, truncated header, decompression bomb: the trainer skips it too
            size = None
        with self._lock:
            self._sizes[key] = (st.st_mtime_ns, st.st_size, size)
        return size


SIZES = SizeCache()  # one for the app: the Captions and Training screens share what they have read


def read_sizes(paths: Iterable[Path], cancelled: Callable[[], bool] = lambda: False) -> dict[Path, Size | None] | None:
    """Each path's size (None: unreadable); None when `cancelled()` turned true on the way. Worker threads only."""
    out: dict[Path, Size | None] = {}
    for path in paths:
        if cancelled():
            return None
        out[path] = SIZES.size(path)
    return out


def settings_key(config) -> tuple:
    """What the bucket assignment of a folder depends on: its path and the TrainConfig's size and bucket fields."""
    return (str(config.data),) + tuple(getattr(config, name) for name in BUCKET_FIELDS if name != "resize")


def wizard_config(state):
    """The TrainConfig the wizard would train with now (its settings over the defaults, as the Training screen builds
    it); a setting that does not parse (being typed) counts as its default here."""
    from core.training.config import TrainConfig

    data = state.train_config()
    try:
        return TrainConfig.from_dict(data, validate=False).validate(require_paths=False)
    except Exception:
        pass
    good = {}
    for name in BUCKET_FIELDS:
        try:
            TrainConfig.from_dict({name: data[name]}, validate=False).validate(require_paths=False)
            good[name] = data[name]
        except Exception:
            continue
    try:
        return TrainConfig.from_dict(good, validate=False).validate(require_paths=False)
    except Exception:  # valid one by one, not together (bucket_max_side under bucket_min_side)
        return TrainConfig()


def fit_text(config, size: Size | None) -> str:
    """One image's line on the Captions screen, e.g. "bucket 448×576 (from 900×1200)"."""
    if size is None:
        return "cannot read this image's size: the trainer will skip it"
    fit: Fit = image_fit(config, size)
    source = f"{size[0]}×{size[1]}"
    if fit.kind == "skip":
        return f"too small for training ({source}): the trainer skips it"
    target = f"{fit.size[0]}×{fit.size[1]}"
    if fit.kind == "bucket":
        kept = config.bucket_no_upscale and size[0] * size[1] < config.width * config.height
        return f"bucket {target} (from {source}{', not upscaled' if kept else ''})"
    if fit.kind == "none":
        return f"trained at its own size, {target} (from {source})"
    verb = "stretched" if fit.kind == "stretch" else "centre crop"
    scale = max(fit.size[0] / size[0], fit.size[1] / size[1])
    if scale > 1.005:  # smaller than the training size: it is enlarged first (blurrier than a native image)
        factor = f"{scale:.2f}" if scale < 1.1 else f"{scale:.1f}"
        return f"upscaled {factor}× and {'stretched' if fit.kind == 'stretch' else 'centre-cropped'} to {target} " \
               f"(from {source})"
    return f"{verb} to {target} (from {source})"


def bucket_summary(config, sizes: dict[Path, Size | None], width: int = 0) -> str:
    """The Training screen's line, e.g. "buckets: 512×512 ×10 · 448×576 ×6 · 576×448 ×2", largest buckets first;
    with a `width`, broken into lines between buckets (never inside "512×512 ×10")."""
    readable = [(path, size) for path, size in sizes.items() if size is not None]
    if not sizes:
        return "buckets: no images in the dataset folder"
    groups = assign_buckets(readable, bucketer_for(config))
    skipped = len(groups.pop(None, []))
    ranked = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = [f"{w}×{h} ×{len(members)}" for (w, h), members in ranked[:SUMMARY_BUCKETS]]
    if len(ranked) > SUMMARY_BUCKETS:
        parts.append(f"+{len(ranked) - SUMMARY_BUCKETS} more")
    if skipped:
        parts.append(f"too small ×{skipped}")
    unreadable = len(sizes) - len(readable)
    if unreadable:
        parts.append(f"unreadable ×{unreadable}")
    return _wrap(["buckets:"] + parts, width)


def _wrap(parts: list[str], width: int) -> str:
    lines = [parts[0]]
    for i, part in enumerate(parts[1:]):
        joined = f"{lines[-1]}{' · ' if i else ' '}{part}"
        if width and len(joined) + 2 > width and i:  # room for the " ·" a break leaves
            lines[-1] += " ·"
            lines.append(part)
        else:
            lines[-1] = joined
    return "\n".join(lines)
