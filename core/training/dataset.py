"""Training images and captions into cached latents.

- A flat folder of images; `IMG.txt` beside `IMG.png` is its caption. Without one, the filename stem is cleaned
  (leading digits/dashes stripped like A1111, `_` to spaces) and used.
- Resize: `crop` (aspect-preserving centre crop to W x H, the default), `stretch` (A1111's bicubic stretch), `none`
  (native size, cropped down to a multiple of 8; batches only hold images of equal size).
- Latents are VAE-encoded once. `once` samples the posterior once (seeded), `deterministic` uses its mean, `random`
  keeps mean and std and resamples on every fetch from the training generator (so resume stays exact).
- Source images are only read, never modified. Unreadable images are skipped with a `warning` event; no usable image
  at all is a TiwizError.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import TiwizError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
RESIZE_MODES = ("crop", "stretch", "none")
_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")
ENCODE_BATCH = 8


def clean_stem(stem: str) -> str:
    """Caption from a filename stem: `00012-cat_on_a_mat` -> `cat on a mat`."""
    text = _LEADING_NUMBERS.sub("", stem).replace("_", " ")
    return " ".join(text.split())


def read_caption(image_path: Path) -> str:
    """The same-stem `.txt` caption (lines joined with spaces), else the cleaned filename stem."""
    txt = image_path.with_suffix(".txt")
    if txt.is_file():
        try:
            return " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
        except OSError:
            pass
    return clean_stem(image_path.stem)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                  and not p.name.startswith("."))


def load_rgb(path: Path):
    """Open an image as RGB with EXIF orientation applied (transparent areas onto white)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        return im.convert("RGB")


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

    def epoch_batches(self, rng: random.Random, batch_size: int) -> list[list[int]]:
        """One epoch: every image once, shuffled, in batches of one size each (a group's last batch may be short)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for i, item in enumerate(self.items):
            groups.setdefault(item.size, []).append(i)
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
        loaded.append((path, read_caption(path), im))
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
