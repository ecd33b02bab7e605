"""Booru tags from a WD14-v3-style ONNX tagger (the SmilingWolf `wd-*-tagger-v3` layout: `model.onnx` and
`selected_tags.csv`), through onnxruntime (the optional extra `tiwiz[tagger]`; CUDA when onnxruntime-gpu is there).

The reference semantics (kohya-ss `tag_images_by_wd14_tagger.py`, the taggers' own demo), which the model was trained
with: the image composited on white when it has transparency, RGB turned to BGR, padded with white to a centred
square, resized to the model's input size (read from the model), float32 in 0..255, NHWC. The output is one
probability per row of `selected_tags.csv` (`tag_id,name,category,count`): category 9 rows are ratings (the one with
the highest probability is used, only when asked), 0 general tags (kept at `general_threshold`), 4 character tags (kept
at `character_threshold`). Tags come out ordered by confidence, character tags first (and the rating before them);
underscores become spaces except in tags of three characters or fewer (emoticons such as `^_^`), as kohya does.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from core.errors import TiwizError
from core.prep.blip import CaptionResult
from core.prep.hub import DEFAULT_TAGGER, cached_file, looks_like_path, require_hub

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9
INSTALL_HINT = "Install it with: pip install 'tiwiz[tagger]' (onnxruntime; onnxruntime-gpu for a GPU)."


@dataclass(frozen=True)
class TagSettings:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    rating: bool = False  # put the most likely rating tag first
    exclude: tuple[str, ...] = ()  # tags never written (either spelling: spaces or underscores)
    max_tags: int = 0  # 0: no limit
    keep_underscores: bool = False


@dataclass
class TagTable:
    """The rows of `selected_tags.csv`, in the model's output order."""

    names: list[str] = field(default_factory=list)
    categories: list[int] = field(default_factory=list)


def read_tag_table(path: str | os.PathLike) -> TagTable:
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise TiwizError(f"Cannot read the tagger's tag list {path}: {exc}") from None
    if not rows or [c.strip() for c in rows[0][:3]] != ["tag_id", "name", "category"]:
        raise TiwizError(f"{path} is not a tagger tag list: its first line must be tag_id,name,category,count.")
    table = TagTable()
    for n, row in enumerate(rows[1:], 2):
        try:
            table.names.append(row[1])
            table.categories.append(int(row[2]))
        except (IndexError, ValueError):
            raise TiwizError(f"{path}, line {n}: expected tag_id,name,category,count, got {','.join(row)!r}.") from None
    return table


def display_tag(name: str, keep_underscores: bool = False) -> str:
    return name if keep_underscores or len(name) <= 3 else name.replace("_", " ")


def _tag_key(tag: str) -> str:
    return " ".join(tag.replace("_", " ").split()).casefold()


def select_tags(probs: Sequence[float], table: TagTable, settings: TagSettings) -> list[str]:
    """The tags of one image from its output row: rating (when asked), then character tags, then general tags, each
    group by confidence (ties in the CSV's order); excluded tags left out; at most `max_tags`."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(table.names),):
        raise TiwizError(f"The tagger gave {probs.size} scores for an image; selected_tags.csv lists "
                         f"{len(table.names)} tags: the model and the tag list do not belong together.")
    excluded = {_tag_key(t) for t in settings.exclude}
    cats = np.asarray(table.categories)

    def group(category: int, threshold: float) -> list[int]:
        idx = [i for i in np.flatnonzero((cats == category) & (probs >= threshold))
               if _tag_key(table.names[i]) not in excluded]
        return sorted(idx, key=lambda i: (-probs[i], i))

    chosen = group(CHARACTER, settings.character_threshold) + group(GENERAL, settings.general_threshold)
    if settings.rating:
        ratings = np.flatnonzero(cats == RATING)
        if ratings.size:
            best = int(ratings[np.argmax(probs[ratings])])
            if _tag_key(table.names[best]) not in excluded:
                chosen.insert(0, best)
    if settings.max_tags > 0:
        chosen = chosen[:settings.max_tags]
    return [display_tag(table.names[i], settings.keep_underscores) for i in chosen]


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """One tagger input (size × size × 3, float32, BGR, 0..255), exactly as the reference prepares it."""
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        image = image.convert("RGBA")
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        image = white
    elif image.mode != "RGB":
        image = image.convert("RGB")
    arr = np.asarray(image)[:, :, ::-1]  # RGB -> BGR
    h, w = arr.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    arr = np.pad(arr, ((top, side - h - top), (left, side - w - left), (0, 0)), constant_values=255)
    if side >= size:
        import cv2

        arr = cv2.resize(np.ascontiguousarray(arr), (size, size), interpolation=cv2.INTER_AREA)
    else:
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((size, size), Image.LANCZOS))
    return arr.astype(np.float32)


def resolve_model(model: str) -> Path:
    """The folder holding model.onnx and selected_tags.csv: `model` itself when it is a folder, else the Hugging Face
    cache's copy of repository `model` (downloaded first when the machine is online). Fails before any work."""
    if looks_like_path(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise TiwizError(f"Tagger folder {folder} does not exist (or is not a folder).")
        missing = [n for n in (MODEL_FILE, TAGS_FILE) if not (folder / n).is_file()]
        if missing:
            raise TiwizError(f"{folder} is not a tagger folder: it lacks {' and '.join(missing)} (a WD14-v3 tagger "
                             f"has model.onnx and selected_tags.csv, e.g. `huggingface-cli download {DEFAULT_TAGGER} "
                             f"model.onnx selected_tags.csv --local-dir {folder}`).")
        return folder
    cached = [cached_file(model, n) for n in (MODEL_FILE, TAGS_FILE)]
    if all(cached):
        return Path(cached[0]).parent
    require_hub("Tagger", model, "--tagger", (MODEL_FILE, TAGS_FILE))
    from huggingface_hub import hf_hub_download

    try:
        paths = [hf_hub_download(model, n) for n in (MODEL_FILE, TAGS_FILE)]
    except Exception as exc:
        raise TiwizError(f"Cannot download the tagger {model!r}: {str(exc).splitlines()[0]}") from None
    return Path(paths[0]).parent


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise TiwizError(f"Tagging needs onnxruntime, which is not installed. {INSTALL_HINT}") from None
    return onnxruntime


class Tagger:
    """Tags images with a WD14-v3-style ONNX tagger; `caption_results` has BlipCaptioner's interface."""

    def __init__(self, model: str = DEFAULT_TAGGER, settings: TagSettings | None = None, batch_size: int = 8):
        ort = _onnxruntime()
        self.settings = settings or TagSettings()
        self.folder = resolve_model(model)
        self.table = read_tag_table(self.folder / TAGS_FILE)
        available = ort.get_available_providers()
        self.providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # no provider chatter in our output
        try:
            self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options, providers=self.providers)
        except Exception as exc:
            raise TiwizError(f"Cannot load the tagger {self.folder / MODEL_FILE}: {str(exc).splitlines()[0]}") \
                from None
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        shape = list(spec.shape)
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int):
            raise TiwizError(f"{self.folder / MODEL_FILE} is not a WD14-style tagger: its input is {shape}, not "
                             "(batch, size, size, 3).")
        self.size = int(shape[1])
        fixed = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.batch_size = fixed or max(1, batch_size)

    def scores(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The model's output rows for PIL images (one batch)."""
        batch = np.stack([prepare_image(im, self.size) for im in images])
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])

    def caption_results(self, images: Sequence[Image.Image | str | os.PathLike], sink=None,
                        names: Iterable[str] | None = None) -> list[CaptionResult]:
        """Tags for every image (PIL images or paths), `batch_size` at a time, as comma-separated captions. An image
        that cannot be read is named in a `warning` event and gets an empty caption with a problem."""
        images = list(images)
        names = list(names) if names is not None else [
            str(im) if not isinstance(im, Image.Image) else f"image {i + 1}" for i, im in enumerate(images)]
        results: list[CaptionResult | None] = [None] * len(images)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(images), self.batch_size):
                index = list(range(start, min(start + self.batch_size, len(images))))
                opened = list(pool.map(_open, (images[i] for i in index)))
                good = [(i, im) for i, im in zip(index, opened) if isinstance(im, Image.Image)]
                for i, problem in ((i, im) for i, im in zip(index, opened) if not isinstance(im, Image.Image)):
                    results[i] = CaptionResult("", problem)
                    if sink is not None:
                        sink.emit("warning", message=f"The tagger skipped {names[i]}: {problem}", file=names[i])
                if good:
                    rows = self.scores([im for _, im in good])
                    for (i, _), row in zip(good, rows):
                        tags = select_tags(row, self.table, self.settings)
                        results[i] = CaptionResult(", ".join(tags), None if tags else "no tag above the thresholds")
        return [r for r in results if r is not None]


def _open(image) -> Image.Image | str:
    """A loaded PIL image, or why it cannot be read."""
    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(image) as im:
            im.seek(0)
            im.load()
            return im.copy()
    except Exception as exc:  # a bad file is reported by name and skipped, never a traceback
        return f"cannot read it as an image ({exc})"
