"""Training images and captions into cached latents.

- A flat folder of images; `IMG.txt` beside `IMG.png` is its caption. Without one, the filename stem is cleaned
  (leading digits/dashes stripped like A1111, `_` to spaces) and used. Listing, caption reading and image loading
  are `core.prep.captions` and `core.prep.images`, the same code the wizard and preprocessing use.
- Resize: `crop` (aspect-preserving centre crop to W x H, the default), `stretch` (A1111's bicubic stretch), `none`
  (native size, cropped down to a multiple of 8; batches only hold images of equal size).
- Latents are VAE-encoded once. `once` samples the posterior once (seeded), `deterministic` uses its mean, `random`
  keeps mean and std and resamples on every fetch from the training generator (so resume stays exact).
- Source images are only read, never modified. Unreadable images are skipped with a `warning` event; no usable image
  at all is a TiwizError.
"""

from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.errors import TiwizError
from core.prep.buckets import resize_to_bucket
from core.prep.captions import IMAGE_EXTENSIONS, list_images, training_caption
from core.prep.images import load_rgb as load_checked
from core.training.conditioning import sdxl_time_ids

RESIZE_MODES = ("crop", "stretch", "none")
ENCODE_BATCH = 8
ENCODE_PIXELS = 4 * 1024 * 1024  # per VAE call: 4 images at 1024 px (SDXL), 8 at 512; bounds the encoder's memory


def load_rgb(path: Path):
    """The image as RGB, loaded like preprocessing loads it (`core.prep.images.load_rgb`: EXIF orientation,
    16-bit scaling, transparency on mid-grey)."""
    return load_checked(path).image


def resize_image(im, width: int, height: int, mode: str):
    """Apply a resize mode; returns a PIL image whose sides are multiples of 8."""
    return resize_with_crop(im, width, height, mode)[0]


def resize_with_crop(im, width: int, height: int, mode: str):
    """`resize_image`, also returning the crop's (left, top) offset in the resized image's pixels: what SDXL's
    `crops_coords_top_left` conditioning means (a centre crop of a non-square image is not (0, 0))."""
    if mode == "stretch":
        return im.resize((width, height), Image.BICUBIC), (0, 0)
    if mode == "crop":
        scale = max(width / im.width, height / im.height)
        new_w, new_h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
        im = im.resize((new_w, new_h), Image.LANCZOS)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return im.crop((left, top, left + width, top + height)), (left, top)
    if mode == "none":
        w8, h8 = im.width // 8 * 8, im.height // 8 * 8
        if w8 < 8 or h8 < 8:
            raise ValueError(f"image is {im.width}x{im.height}, smaller than 8 px")
        left, top = (im.width - w8) // 2, (im.height - h8) // 2
        return im.crop((left, top, left + w8, top + h8)), (left, top)
    raise TiwizError(f"resize: must be one of {', '.join(RESIZE_MODES)} (got {mode!r})")


def image_to_tensor(im):
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@dataclass
class Item:
    path: Path
    caption: str
    size: tuple[int, int]          # (width, height) in pixels after resizing
    mean: "object"                 # posterior mean [4, h/8, w/8], scaled, CPU float32
    std: "object | None"           # posterior std (scaled), kept only for latent_sampling="random"
    latent: "object | None"        # the cached latent for "once"/"deterministic"
    # SDXL's size conditioning: the image's size before any resizing (width, height) and where the kept crop starts
    # (left, top) in the resized image. Images written by `tiwiz preprocess` take both from its report.json.
    original_size: "tuple[int, int] | None" = None
    crop_left_top: tuple[int, int] = (0, 0)

    def time_ids(self) -> list[float]:
        """SDXL `add_time_ids`: original (h, w), crop (top, left), target (h, w)."""
        return sdxl_time_ids(self.original_size or self.size, self.crop_left_top, self.size)


class TrainDataset:
    def __init__(self, items: list[Item], latent_sampling: str) -> None:
        self.items = items
        self.latent_sampling = latent_sampling

    def __len__(self) -> int:
        return len(self.items)

    def latents(self, indices: list[int], generator):
        """Stacked latents for a batch (all the same size). `generator` is used only in `random` mode."""
        out = []
        for i in indices:
            item = self.items[i]
            if item.latent is not None:
                out.append(item.latent)
            else:
                noise = torch.randn(item.mean.shape, generator=generator, dtype=item.mean.dtype)
                out.append(item.mean + item.std * noise)
        return torch.stack(out)

    def time_ids(self, indices: list[int]):
        """SDXL time ids for a batch: a float tensor [len(indices), 6]."""
        return torch.tensor([self.items[i].time_ids() for i in indices], dtype=torch.float32)

    def epoch_batches(self, rng: random.Random, batch_size: int, indices: list[int] | None = None) -> list[list[int]]:
        """One epoch: every image once (of `indices`, default all), shuffled, in batches of one size each (a group's
        last batch may be short). Images of different sizes (buckets) never share a batch."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i in (range(len(self.items)) if indices is None else indices):
            groups.setdefault(self.items[i].size, []).append(i)
        batches = []
        for size in sorted(groups):
            members = groups[size]
            rng.shuffle(members)
            batches += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
        rng.shuffle(batches)
        return batches


def build_dataset(folder, *, vae, width: int, height: int, resize: str, latent_sampling: str, seed: int,
                  sink=None, device=None, dtype=None, bucketer=None) -> TrainDataset:
    """Load, resize and VAE-encode every usable image once. Deterministic for a given seed. With a `bucketer`
    (core.prep.buckets) each image goes to its aspect-ratio bucket instead of the `resize` mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TiwizError(f"data: {folder} is not a folder of images")
    paths = list_images(folder)
    if not paths:
        raise TiwizError(f"data: no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")

    prepared = preprocess_crops(folder)
    loaded, skipped, geometry = [], [], {}
    for path in paths:
        try:
            source = load_rgb(path)
            if bucketer is not None:
                im, crop = resize_to_bucket(source, bucketer)
            else:
                im, crop = resize_with_crop(source, width, height, resize)
            geometry[path] = _original_geometry(prepared.get(path.name), source.size, im.size, crop)
        except TiwizError:
            raise
        except Exception as exc:  # a bad file must not stop the run; report it and move on
            skipped.append(path.name)
            if sink is not None:
                sink.emit("warning", message=f"skipped image {path.name}: {exc.__class__.__name__}: {exc}")
            continue
        loaded.append((path, training_caption(path), im))
    if not loaded:
        raise TiwizError(f"data: none of the {len(paths)} images in {folder} could be read "
                         f"(skipped: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''})")

    device = device or next(vae.parameters()).device
    dtype = dtype or next(vae.parameters()).dtype
    if dtype == torch.float16:  # the SD/SDXL VAEs overflow in fp16: encode once in fp32 (latents are cached anyway)
        vae, dtype = copy.deepcopy(vae).to(torch.float32), torch.float32
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    generator = torch.Generator().manual_seed(seed + 7919)
    items: list[Item] = []
    # Encode in same-size chunks; results are identical whatever the chunking since the VAE is per-sample.
    order = sorted(range(len(loaded)), key=lambda k: loaded[k][2].size)
    encoded: dict[int, tuple] = {}
    k = 0
    while k < len(order):
        size = loaded[order[k]][2].size
        chunk = [order[k]]
        most = max(1, min(ENCODE_BATCH, ENCODE_PIXELS // (size[0] * size[1])))
        while k + len(chunk) < len(order) and len(chunk) < most and loaded[order[k + len(chunk)]][2].size == size:
            chunk.append(order[k + len(chunk)])
        pixels = torch.stack([image_to_tensor(loaded[j][2]) for j in chunk]).to(device=device, dtype=dtype)
        with torch.no_grad(), torch.autocast(device.type if hasattr(device, "type") else str(device), enabled=False):
            dist = vae.encode(pixels).latent_dist
        for row, j in enumerate(chunk):
            encoded[j] = (dist.mean[row].float().cpu() * scale, dist.std[row].float().cpu() * scale)
        k += len(chunk)
    for j, (path, caption, im) in enumerate(loaded):
        mean, std = encoded[j]
        if latent_sampling == "once":
            noise = torch.randn(mean.shape, generator=generator)
            item = Item(path, caption, im.size, mean, None, mean + std * noise)
        elif latent_sampling == "deterministic":
            item = Item(path, caption, im.size, mean, None, mean)
        elif latent_sampling == "random":
            item = Item(path, caption, im.size, mean, std, None)
        else:
            raise TiwizError(f"latent_sampling: must be one of once, deterministic, random (got {latent_sampling!r})")
        item.original_size, item.crop_left_top = geometry[path]
        items.append(item)
    return TrainDataset(items, latent_sampling)


def preprocess_crops(folder: Path) -> dict[str, dict]:
    """{output image name: {"original_size": [w, h], "crop_left_top": [x, y]}} from the `report.json` that
    `tiwiz preprocess` writes beside its images; {} when there is none (or it is unreadable)."""
    try:
        report = json.loads((Path(folder) / "report.json").read_text(encoding="utf-8"))
        out = {}
        for source in report.get("sources", []):
            for output in source.get("outputs", []):
                if "original_size" in output and "crop_left_top" in output:
                    out[str(output["image"])] = {"original_size": output["original_size"],
                                                 "crop_left_top": output["crop_left_top"]}
        return out
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _original_geometry(prepared: dict | None, loaded_size, final_size, crop) -> tuple[tuple[int, int], tuple[int, int]]:
    """(original (w, h), crop (left, top)) for an image. A preprocessed image already is a crop of a bigger original:
    its report entry gives the original and the crop, in the preprocessing's output scale; our own resize of it
    (usually none) scales and shifts that crop."""
    if not prepared:
        return (int(loaded_size[0]), int(loaded_size[1])), (int(crop[0]), int(crop[1]))
    try:
        ow, oh = (int(v) for v in prepared["original_size"])
        px, py = (float(v) for v in prepared["crop_left_top"])
    except (KeyError, TypeError, ValueError):
        return (int(loaded_size[0]), int(loaded_size[1])), (int(crop[0]), int(crop[1]))
    scale = max(final_size[0] / max(1, loaded_size[0]), final_size[1] / max(1, loaded_size[1]))
    return (ow, oh), (round(px * scale) + int(crop[0]), round(py * scale) + int(crop[1]))
