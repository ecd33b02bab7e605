"""Real photos that ship offline (scikit-image, scikit-learn), written as small files for the captions/doctor tests."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "moon", "coins", "hubble_deep_field")


@lru_cache(maxsize=None)
def photo_array(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        data = load_sample_images()
        index = [Path(f).stem for f in data.filenames].index(name)
        return data.images[index]
    import skimage.data

    return getattr(skimage.data, name)()


def photo(name: str, max_side: int | None = None) -> Image.Image:
    img = Image.fromarray(photo_array(name)).convert("RGB")
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.LANCZOS)
    return img


def write_photos(folder: Path, names, max_side: int = 96, ext: str = "png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.{ext}"
        photo(name, max_side).save(path)
        paths.append(path)
    return paths
