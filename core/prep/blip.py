"""BLIP image captioning through transformers (`BlipForConditionalGeneration`), batched, on the GPU when there is one.

The model is loaded once per process and reused (A1111 reloaded its .pth on every run). Offline with no local copy,
loading fails with a message that says how to fetch the model beforehand. A caption that comes back empty or
meaningless is reported (a `warning` event and `CaptionResult.problem`), never dropped silently.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from core.errors import TiwizError
from core.prep.hub import DEFAULT_BLIP, cached_file, fetch_help, looks_like_path, require_hub


_cache: dict[tuple, tuple] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class CaptionResult:
    text: str
    problem: str | None = None  # why the caption is unusable, None when it looks fine


def caption_problem(text: str) -> str | None:
    """Why a generated caption is unusable (empty, no words, one token repeated), or None."""
    text = (text or "").strip()
    if not text:
        return "empty caption"
    words = re.findall(r"[^\W\d_]{2,}", text)
    if not words:
        return f"no words in caption {text!r}"
    if len(words) >= 4 and len(set(w.lower() for w in words)) == 1:
        return f"one word repeated: {text!r}"
    return None


def _fetch_help(model: str) -> str:
    return fetch_help(model, "--blip")


def hub_source_is_local(model: str) -> bool:
    """For a hub id: True to load from the local Hugging Face cache only (it is cached, or HF_HUB_OFFLINE is set);
    False to let the hub client download it. Raises TiwizError at once when it is not cached and cannot be fetched
    (offline mode, or the hub unreachable), instead of the hub client's minutes of retries."""
    if cached_file(model, "config.json"):
        return True
    require_hub("BLIP model", model, "--blip")
    return False


def _load(model: str, device: str, fp16: bool):
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor
    from transformers.utils import logging as hf_logging

    path = Path(model).expanduser()
    if looks_like_path(model):
        if not path.is_dir():
            raise TiwizError(f"BLIP model folder {path} does not exist (or is not a folder).")
        if not (path / "config.json").is_file():
            raise TiwizError(f"{path} is not a BLIP model folder: it has no config.json. "
                             f"Save one with `save_pretrained` or `huggingface-cli download {DEFAULT_BLIP} "
                             f"--local-dir {path}`.")
        source, local_only = str(path), True
    else:
        source = model
        local_only = hub_source_is_local(model)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # no torchvision-fallback notices or progress chatter in our output
    hf_logging.disable_progress_bar()
    try:
        dtype = torch.float16 if fp16 else torch.float32
        net = BlipForConditionalGeneration.from_pretrained(source, local_files_only=local_only, dtype=dtype)
        processor = BlipProcessor.from_pretrained(source, local_files_only=local_only)
    except TiwizError:
        raise
    except (OSError, ValueError) as exc:
        if path.is_dir():
            raise TiwizError(f"Cannot load the BLIP model in {path}: {str(exc).splitlines()[0]}") from exc
        offline = " (offline mode is on: HF_HUB_OFFLINE=1)" if local_only else ""
        raise TiwizError(
            f"BLIP model {model!r} is not available on this machine{offline}. " + _fetch_help(model)
        ) from exc
    except Exception as exc:  # a corrupt or mismatched checkpoint: still no traceback for the user
        raise TiwizError(f"Cannot load the BLIP model {model!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    net.to(device).eval()
    return net, processor


def _rgb(image: Image.Image | str | os.PathLike) -> Image.Image:
    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as im:
                im.seek(0)
                image = im.copy()
        except (OSError, ValueError) as exc:
            raise TiwizError(f"Cannot read image {image}: {exc}") from exc
    from core.prep.images import to_rgb

    return to_rgb(image)


class BlipCaptioner:
    """Caption images with BLIP. `model` is a hub id (from the local Hugging Face cache when offline) or a folder."""

    def __init__(self, model: str | os.PathLike = DEFAULT_BLIP, device: str | None = None, batch_size: int = 8,
                 max_length: int = 48, min_length: int = 5, num_beams: int = 1):
        if not looks_like_path(str(model)):
            hub_source_is_local(str(model))  # an uncached hub id offline fails here, before torch is imported
        import torch

        if batch_size < 1 or max_length < 2 or min_length < 0 or num_beams < 1 or min_length > max_length:
            raise TiwizError("BLIP settings must satisfy batch_size>=1, num_beams>=1, 0<=min_length<=max_length, max_length>=2.")
        self.model_name = str(model)
        if device is None or device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.fp16 = self.device.type == "cuda"
        self.batch_size = batch_size
        self.max_length = max_length
        self.min_length = min_length
        self.num_beams = num_beams
        key = (str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else self.model_name,
               str(self.device), self.fp16)
        with _cache_lock:
            if key not in _cache:
                _cache[key] = _load(self.model_name, str(self.device), self.fp16)
            self.model, self.processor = _cache[key]

    def caption_results(self, images: Sequence[Image.Image | str | os.PathLike], sink=None,
                        names: Iterable[str] | None = None) -> list[CaptionResult]:
        """Caption every image (PIL images or paths), `batch_size` at a time. Unusable captions are returned with a
        `problem` and, when `sink` is given, reported as `warning` events naming the image."""
        import torch

        images = list(images)
        names = list(names) if names is not None else [
            str(im) if not isinstance(im, Image.Image) else f"image {i + 1}" for i, im in enumerate(images)]
        texts: list[str] = []
        for start in range(0, len(images), self.batch_size):
            batch = [_rgb(im) for im in images[start:start + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt")
            pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
            with torch.inference_mode():
                out = self.model.generate(pixel_values=pixel_values, max_length=self.max_length,
                                          min_length=self.min_length, num_beams=self.num_beams)
            texts += [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]
        results = [CaptionResult(t, caption_problem(t)) for t in texts]
        if sink is not None:
            for name, r in zip(names, results):
                if r.problem:
                    sink.emit("warning", message=f"BLIP gave no usable caption for {name}: {r.problem}", file=name)
        return results

    def caption(self, images: Sequence[Image.Image | str | os.PathLike], sink=None) -> list[str]:
        """Captions, one per image, in order ("" where BLIP produced nothing usable; see `caption_results`)."""
        return [r.text if not r.problem else "" for r in self.caption_results(images, sink=sink)]
