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

import random
from dataclasses import dataclass
from pathlib import Path

from core.errors import TiwizError
from core.prep.captions import IMAGE_EXTENSIONS, list_images, training_caption

RESIZE_MODES = ("crop", "stretch", "none")
ENCODE_BATCH = 8


def load_rgb(path: Path):
    """The image as RGB, loaded like preprocessing loads it (`core.prep.images.load_rgb`: EXIF orientation,
    16-bit scaling, transparency on mid-grey)."""
    from core.prep.images import load_rgb as load_checked

    return load_checked(path).image


def resize_image(im, width: int, height: int, mode: str):
    """Apply a resize mode; returns a PIL image whose sides are multiples of 8."""
    from PIL import Image

    if mode == "stretch":
        return im.resize((width, height), Image.BICUBIC)
    if mode == "crop":
        scale = max(width / im.width, height / im.height)
        new_w, new_h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
        im = im.resize((new_w, new_h), Image.LANCZOS)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return im.crop((left, top, left + width, top + height))
    if mode == "none":
        w8, h8 = im.width // 8 * 8, im.height // 8 * 8
        if w8 < 8 or h8 < 8:
            raise ValueError(f"image is {im.width}x{im.height}, smaller than 8 px")
        left, top = (im.width - w8) // 2, (im.height - h8) // 2
        return im.crop((left, top, left + w8, top + h8))
    raise TiwizError(f"resize: must be one of {', '.join(RESIZE_MODES)} (got {mode!r})")


def image_to_tensor(im):
    import numpy as np
    import torch

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


class TrainDataset:
    def __init__(self, items: list[Item], latent_sampling: str) -> None:
        self.items = items
        self.latent_sampling = latent_sampling

    def __len__(self) -> int:
        return len(self.items)

    def latents(self, indices: list[int], generator):
        """Stacked latents for a batch (all the same size). `generator` is used only in `random` mode."""
        import torch

        out = []
        for i in indices:
            item = self.items[i]
            if item.latent is not None:
                out.append(item.latent)
            else:
                noise = torch.randn(item.mean.shape, generator=generator, dtype=item.mean.dtype)
                out.append(item.mean + item.std * noise)
        return torch.stack(out)

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
                  sink=None, device=None, dtype=None) -> TrainDataset:
    """Load, resize and VAE-encode every usable image once. Deterministic for a given seed."""
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise TiwizError(f"data: {folder} is not a folder of images")
    paths = list_images(folder)
    if not paths:
        raise TiwizError(f"data: no images in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")

    loaded, skipped = [], []
    for path in paths:
        try:
            im = resize_image(load_rgb(path), width, height, resize)
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
        while k + len(chunk) < len(order) and len(chunk) < ENCODE_BATCH and loaded[order[k + len(chunk)]][2].size == size:
            chunk.append(order[k + len(chunk)])
        pixels = torch.stack([image_to_tensor(loaded[j][2]) for j in chunk]).to(device=device, dtype=dtype)
        with torch.no_grad():
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
        items.append(item)
    return TrainDataset(items, latent_sampling)
