"""Perceptual hashes (numpy + PIL) for near-duplicate detection, including crops, resizes and mirrored copies.

`phash` is the classic DCT hash: 32×32 grayscale, 2-D DCT, the 8×8 lowest frequencies thresholded at their median,
64 bits. A global hash survives resizing and recompression but not cropping, so a `Fingerprint` also hashes a grid of
sub-windows (several scales and positions, plus square windows like a centre crop). Image A is a near-duplicate of
B when the hash of A (whole, or its centre square) is within `HASH_THRESHOLD` bits of some window of B, or the other
way round, and a pixel check confirms it: the two regions, aligned within a few percent, correlate at
`CORRELATION_THRESHOLD` or more. The check keeps different photos of similar scenes (or of the same face) apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageOps

from core.prep.images import TRANSPARENT_BACKGROUND

HASH_THRESHOLD = 14
CORRELATION_THRESHOLD = 0.9
_THUMB = 256
_CORR_SIZE = 16
_SCALES = (1.0, 0.9, 0.8, 0.7)
_SQUARE_SCALES = (1.0, 0.85, 0.7)

Box = tuple[float, float, float, float]


@lru_cache(maxsize=4)
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


def to_gray(image: Image.Image) -> Image.Image:
    """8-bit grayscale, transparency composited on mid-grey."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        image = Image.alpha_composite(base, rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(image, dtype=np.float64)
        image = Image.fromarray((arr / max(arr.max(), 1) * 255).astype(np.uint8))
    return image.convert("L")


def _hash_pixels(pixels: np.ndarray) -> int:
    d = _dct_matrix(32)
    freq = (d @ pixels @ d.T)[:8, :8].ravel()
    bits = freq > np.median(freq[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def phash(image: Image.Image, *, mirror: bool = False) -> int:
    """64-bit DCT perceptual hash of `image` (of its horizontal mirror when `mirror`)."""
    gray = to_gray(image)
    if mirror:
        gray = ImageOps.mirror(gray)
    return _hash_pixels(np.asarray(gray.resize((32, 32), Image.BICUBIC), dtype=np.float64))


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element (numpy>=2 has a ufunc; older numpy gets a byte table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BYTE_BITS[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1)


def _windows(w: int, h: int) -> list[Box]:
    out: list[Box] = []
    for s in _SCALES:
        cw, ch = w * s, h * s
        steps = np.linspace(0, 1, 5) if s < 1 else (0.5,)
        out += [((w - cw) * fx, (h - ch) * fy, (w - cw) * fx + cw, (h - ch) * fy + ch) for fx in steps for fy in steps]
    for s in _SQUARE_SCALES:
        side = min(w, h) * s
        xs = _positions(w, side)
        ys = _positions(h, side)
        out += [(x, y, x + side, y + side) for x in xs for y in ys]
    return list(dict.fromkeys(tuple(round(v, 1) for v in box) for box in out))


def _positions(length: float, side: float) -> list[float]:
    if length - side < 1:
        return [(length - side) / 2]
    n = max(3, int(np.ceil((length - side) / (side * 0.1))) + 1)
    return list(np.linspace(0, length - side, n))


def _square_centre(w: int, h: int) -> Box:
    s = min(w, h)
    return ((w - s) / 2, (h - s) / 2, (w - s) / 2 + s, (h - s) / 2 + s)


def _region(gray: Image.Image, box: Box, size: int = 32) -> np.ndarray:
    return np.asarray(gray.resize((size, size), Image.BILINEAR, box=box), dtype=np.float64)


@dataclass
class Fingerprint:
    thumb: Image.Image  # grayscale, longest side <= 256
    boxes: list[Box]
    hashes: np.ndarray  # uint64, one per box

    @property
    def query_boxes(self) -> list[Box]:
        w, h = self.thumb.size
        return [(0, 0, w, h), _square_centre(w, h)]


def fingerprint(image: Image.Image) -> Fingerprint:
    gray = to_gray(image)
    gray.thumbnail((_THUMB, _THUMB), Image.BILINEAR)
    boxes = _windows(*gray.size)
    hashes = np.array([_hash_pixels(_region(gray, b)) for b in boxes], dtype=np.uint64)
    return Fingerprint(gray, boxes, hashes)


def _query_hashes(fp: Fingerprint, mirror: bool) -> list[tuple[np.ndarray, int]]:
    gray = ImageOps.mirror(fp.thumb) if mirror else fp.thumb
    out = []
    for box in fp.query_boxes:
        pixels = _region(gray, box)
        out.append((pixels, _hash_pixels(pixels)))
    return out


def _zscore(a: np.ndarray) -> np.ndarray | None:
    std = a.std()
    return None if std < 1e-6 else (a - a.mean()) / std


def _correlation(query: np.ndarray, gray: Image.Image, box: Box) -> float:
    """Best normalised correlation of `query` against `box` of `gray`, nudged in place and scale: a coarse search
    (±6 %) and then a fine one around the best coarse alignment."""
    small = Image.fromarray(query.astype(np.float32)).resize((_CORR_SIZE, _CORR_SIZE), Image.BILINEAR)
    q = _zscore(np.asarray(small, dtype=np.float64))
    if q is None:
        return 0.0
    w, h = gray.size
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0

    def score(cx: float, cy: float, scale: float) -> float:
        cw, ch = bw * scale, bh * scale
        left = min(max(cx - cw / 2, 0), max(w - cw, 0))
        top = min(max(cy - ch / 2, 0), max(h - ch, 0))
        r = _zscore(_region(gray, (left, top, min(left + cw, w), min(top + ch, h)), _CORR_SIZE))
        return -1.0 if r is None else float((q * r).mean())

    best = (-1.0, (x0 + x1) / 2, (y0 + y1) / 2, 1.0)
    for step_xy, step_s in ((0.03, 0.03), (0.01, 0.01)):
        _, cx, cy, sc = best
        for ds in (-2, -1, 0, 1, 2):
            for dx in (-2, -1, 0, 1, 2):
                for dy in (-2, -1, 0, 1, 2):
                    c = (cx + dx * step_xy * bw, cy + dy * step_xy * bh, sc * (1 + ds * step_s))
                    best = max(best, (score(*c), *c))
    return best[0]


def _one_way(a: Fingerprint, b: Fingerprint, mirror: bool) -> tuple[int, float]:
    best = (65, 0.0)
    for pixels, h in _query_hashes(a, mirror):
        dists = _popcount(b.hashes ^ np.uint64(h))
        for i in np.argsort(dists, kind="stable")[:3]:
            d = int(dists[i])
            if d > HASH_THRESHOLD:
                break
            corr = _correlation(pixels, b.thumb, b.boxes[int(i)])
            if corr > best[1] or (corr == best[1] and d < best[0]):
                best = (d, corr)
    return best


def similarity(a: Fingerprint, b: Fingerprint, *, mirror: bool = False) -> tuple[int, float]:
    """(hash distance, pixel correlation) of the best alignment of `a` (its mirror when `mirror`) with `b`, either as
    a crop/resize of `b` or containing `b`. Correlation 0 means no window was close enough to check."""
    one = _one_way(a, b, mirror)
    two = _one_way(b, a, mirror)
    return max(one, two, key=lambda t: (t[1], -t[0]))


def is_near_duplicate(a: Fingerprint, b: Fingerprint, *, mirror: bool = False) -> bool:
    return similarity(a, b, mirror=mirror)[1] >= CORRELATION_THRESHOLD


def candidate_pairs(fps: list[Fingerprint], *, mirror: bool = False) -> set[tuple[int, int]]:
    """Index pairs (i < j) whose whole-image/centre hashes (mirrored when `mirror`) come within `HASH_THRESHOLD` of a
    window of the other; only these need `similarity`. One vectorised pass instead of n² calls."""
    if len(fps) < 2:
        return set()
    q_hashes, q_owner = [], []
    for i, fp in enumerate(fps):
        for _, h in _query_hashes(fp, mirror):
            q_hashes.append(h)
            q_owner.append(i)
    w_hashes = np.concatenate([fp.hashes for fp in fps])
    w_owner = np.concatenate([np.full(len(fp.hashes), i) for i, fp in enumerate(fps)])
    q = np.array(q_hashes, dtype=np.uint64)
    pairs: set[tuple[int, int]] = set()
    for start in range(0, len(q), 64):  # bounded memory
        block = q[start:start + 64]
        close = _popcount(block[:, None] ^ w_hashes[None, :]) <= HASH_THRESHOLD
        for qi, wi in zip(*np.nonzero(close)):
            a, b = q_owner[start + qi], int(w_owner[wi])
            if a != b:
                pairs.add((min(a, b), max(a, b)))
    return pairs
