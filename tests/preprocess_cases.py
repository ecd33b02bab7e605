"""Real photos (scikit-image, scikit-learn) and generated edge-case files for the preprocess tests."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image


@lru_cache(maxsize=None)
def _array(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_images

        data = load_sample_images()
        return data.images[[Path(f).stem for f in data.filenames].index(name)]
    import skimage.data

    return getattr(skimage.data, name)()


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.fromarray(_array(name)).convert("RGB")
    return img.resize(size, Image.LANCZOS) if size else img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data) & 0xFFFFFFFF)


def bomb_png(width: int = 60000, height: int = 60000) -> bytes:
    """A valid PNG header claiming a huge image, with a few bytes of data: what a decompression bomb looks like."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + png_chunk(b"IEND", b""))


def bad_crc_png(img: Image.Image) -> bytes:
    data = bytearray(png_bytes(img))
    i = data.index(b"IDAT")
    length = struct.unpack(">I", data[i - 4:i])[0]
    data[i + 4 + length - 1] ^= 0xFF  # flip a bit in the compressed data: the chunk CRC no longer matches
    return bytes(data)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (names relative), plus the set of names: to prove nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}
