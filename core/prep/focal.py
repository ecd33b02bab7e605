"""Auto focal-point crop (A1111's modules/textual_inversion/autocrop.py), with its known bugs fixed.

Three detectors each give a set of points; each non-empty set's centroid is weighted w_i / Σw (over non-empty sets),
a weight of 0 turns the detector off, and the crop is centred on the weighted mean, clamped to the image.
- edges: `cv2.goodFeaturesToTrack` (100 corners, quality 0.04, min distance 6% of the short side) after greying out
  the bottom 10% (A1111's anti-watermark step);
- entropy: the crop-sized window, slid in 4 px steps along the long side, whose 1-bit (dithered) histogram scores
  highest on A1111's −Σlog₂p (kept as is: it is what users' crops were tuned on);
- faces: OpenCV's Haar frontal-face cascade shipped in `cv2.data.haarcascades` (nothing is downloaded); the point is
  the face's centre x at one third of its height (eye line).
Fixes over A1111: the image is scaled to *cover* the crop (A1111 could leave it smaller than the crop and crash);
no points at all centres the crop instead of jamming it into the top-left corner; the eye/body cascades and loose
settings that found faces in coins and textures are dropped; the last window position is scored too; the debug image is
returned separately instead of being saved as a training image.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

FACE_CASCADE = "haarcascade_frontalface_default.xml"
# Faces are searched on a grey copy whose short side is FACE_DETECT_SHORT_SIDE (long side at most 8×), for faces at
# least FACE_MIN_FRACTION of the short side, with scaleFactor 1.2 and minNeighbors 8: on the scikit-image and
# scikit-learn photos this finds the astronaut's face (also small, or pasted on a wide flat canvas) and nothing in
# coins, clock, retina, textures, cats or flowers.
FACE_DETECT_SHORT_SIDE = 256
FACE_MIN_FRACTION = 0.10


@dataclass
class Point:
    x: float
    y: float
    size: float = 4.0
    weight: float = 1.0


@dataclass
class FocalResult:
    crop: Image.Image
    box: tuple[int, int, int, int]  # in the scaled image
    focus: Point
    scaled_size: tuple[int, int]
    points: dict[str, list[Point]]  # detector name -> points (scaled-image coordinates)
    centroids: dict[str, Point]  # detector name -> weighted centroid
    timings: dict[str, float] = field(default_factory=dict)  # detector name -> CPU seconds
    scaled: Image.Image | None = None

    @property
    def faces(self) -> int:
        return len(self.points.get("face", []))


_classifiers: dict[str, object] = {}


def _classifier(name: str):
    import cv2

    if name not in _classifiers:
        path = os.path.join(cv2.data.haarcascades, name)
        clf = cv2.CascadeClassifier(path)
        if clf.empty():
            raise RuntimeError(f"OpenCV face cascade {path} is missing (is opencv-python-headless<5 installed?)")
        _classifiers[name] = clf
    return _classifiers[name]


def detect_faces(img: Image.Image) -> list[Point]:
    """Faces as points (x centre, y at a third of the face height), in `img` coordinates."""
    import cv2

    # Small images are scaled up too: the cascade's smallest window is 24 px.
    scale = min(FACE_DETECT_SHORT_SIDE / min(img.size), 8 * FACE_DETECT_SHORT_SIDE / max(img.size))
    small = img.convert("L")
    if scale != 1.0:
        small = small.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    gray = np.asarray(small)  # no equalizeHist: on a canvas with flat areas it hides faces
    min_side = max(20, int(min(small.size) * FACE_MIN_FRACTION))
    faces = _classifier(FACE_CASCADE).detectMultiScale(gray, scaleFactor=1.2, minNeighbors=8,
                                                       minSize=(min_side, min_side))
    return [Point((x + w / 2) / scale, (y + h / 3) / scale, size=w / scale, weight=1 / len(faces))
            for (x, y, w, h) in faces]


def corner_points(img: Image.Image) -> list[Point]:
    import cv2

    gray = img.convert("L")
    ImageDraw.Draw(gray).rectangle([0, img.height * 0.9, img.width, img.height], fill="#999")
    pts = cv2.goodFeaturesToTrack(np.asarray(gray), maxCorners=100, qualityLevel=0.04,
                                  minDistance=min(gray.width, gray.height) * 0.06, useHarrisDetector=False)
    if pts is None:
        return []
    return [Point(float(x), float(y), size=4, weight=1 / len(pts)) for x, y in pts.reshape(-1, 2)]


def _onebit_score(ones: np.ndarray, total: int) -> np.ndarray:
    """A1111's image_entropy on a 1-bit image: −Σ log₂(p) over the non-empty bins of a 2-bin histogram."""
    ones = ones.astype(np.float64)
    zeros = total - ones
    score = np.zeros_like(ones)
    for count in (ones, zeros):
        nz = count > 0
        score[nz] -= np.log2(count[nz] / total)
    return score


def entropy_points(img: Image.Image, crop_w: int, crop_h: int) -> list[Point]:
    """The centre of the best crop-sized window along the long side (4 px steps). The image is dithered once and the
    windows are scored from running sums, instead of A1111's dither-per-window, which is the same score at a
    fraction of the cost."""
    if img.width == img.height:
        return []
    bits = np.asarray(img.convert("1"), dtype=np.uint8)
    landscape = img.width > img.height
    # A1111's windows are [x, 0, x + crop_w, crop_h] (or the portrait equivalent): the top/left strip only.
    strip = bits[:crop_h, :] if landscape else bits[:, :crop_w]
    profile = strip.sum(axis=0 if landscape else 1, dtype=np.int64)
    length, span = (img.width, crop_w) if landscape else (img.height, crop_h)
    if span >= length:
        return []
    csum = np.concatenate([[0], np.cumsum(profile)])
    starts = np.arange(0, length - span + 1, 4)
    ones = csum[starts + span] - csum[starts]
    other = min(img.height, crop_h) if landscape else min(img.width, crop_w)
    scores = _onebit_score(ones, span * other)
    best = int(starts[int(np.argmax(scores))])  # argmax keeps the first maximum, like A1111's strict ">"
    if landscape:
        return [Point(best + crop_w / 2, crop_h / 2, size=25)]
    return [Point(crop_w / 2, best + crop_h / 2, size=25)]


def cover_size(w: int, h: int, crop_w: int, crop_h: int) -> tuple[int, int]:
    """The size `(w, h)` is scaled to so that it just covers the crop (short side to the crop, for same-shape
    targets: what A1111 does when its choice works)."""
    scale = max(crop_w / w, crop_h / h)
    return max(crop_w, math.ceil(w * scale - 1e-6)), max(crop_h, math.ceil(h * scale - 1e-6))


def focal_crop(img: Image.Image, crop_w: int, crop_h: int, *, face_weight: float = 0.9,
               entropy_weight: float = 0.15, edges_weight: float = 0.5, keep_scaled: bool = False) -> FocalResult:
    scaled_size = cover_size(img.width, img.height, crop_w, crop_h)
    scaled = img if scaled_size == img.size else img.resize(scaled_size, Image.LANCZOS, reducing_gap=3.0)

    detectors = (("edges", edges_weight, lambda: corner_points(scaled)),
                 ("entropy", entropy_weight, lambda: entropy_points(scaled, crop_w, crop_h)),
                 ("face", face_weight, lambda: detect_faces(scaled)))
    points: dict[str, list[Point]] = {}
    timings: dict[str, float] = {}
    for name, weight, run in detectors:
        if weight > 0:
            t0 = time.process_time()
            points[name] = run()
            timings[name] = time.process_time() - t0

    weights = {"edges": edges_weight, "entropy": entropy_weight, "face": face_weight}
    total = sum(weights[n] for n, pts in points.items() if pts)
    centroids: dict[str, Point] = {}
    for name, pts in points.items():
        if pts:
            centroids[name] = Point(sum(p.x for p in pts) / len(pts), sum(p.y for p in pts) / len(pts),
                                    weight=weights[name] / total)
    if centroids:
        wsum = sum(c.weight for c in centroids.values())
        focus = Point(round(sum(c.x * c.weight for c in centroids.values()) / wsum),
                      round(sum(c.y * c.weight for c in centroids.values()) / wsum))
    else:
        focus = Point(scaled.width // 2, scaled.height // 2)

    x1 = min(max(int(focus.x - crop_w // 2), 0), scaled.width - crop_w)
    y1 = min(max(int(focus.y - crop_h // 2), 0), scaled.height - crop_h)
    box = (x1, y1, x1 + crop_w, y1 + crop_h)
    return FocalResult(scaled.crop(box), box, focus, scaled.size, points, centroids, timings,
                       scaled if keep_scaled else None)


def debug_image(result: FocalResult) -> Image.Image:
    """The scaled image with each detector's points and centroid, the focal point and the chosen crop drawn on it
    (edges blue, entropy yellow, faces red, focus and crop green)."""
    if result.scaled is None:
        raise ValueError("focal_crop(..., keep_scaled=True) is needed for a debug image")
    im = result.scaled.copy()
    d = ImageDraw.Draw(im)
    max_size = min(im.width, im.height) * 0.07
    colors = {"edges": "#00F", "entropy": "#FF0", "face": "#F00"}
    labels = {"edges": "Edge", "entropy": "Entropy", "face": "Face"}

    def bounding(p: Point, size: float):
        half = max(size, 2) / 2
        return [p.x - half, p.y - half, p.x + half, p.y + half]

    for name, c in result.centroids.items():
        color = colors[name]
        box = bounding(c, max(8.0, max_size * c.weight * 2))
        d.text((box[0], box[1] - 15), f"{labels[name]}: {c.weight:.2f}", fill=color)
        d.ellipse(box, outline=color, width=2)
        for p in result.points[name]:
            d.rectangle(bounding(p, 8 if name != "face" else p.size), outline=color)
    d.ellipse(bounding(result.focus, max_size), outline="#0F0", width=3)
    x1, y1, x2, y2 = result.box
    d.rectangle([x1, y1, x2 - 1, y2 - 1], outline="#0F0", width=3)
    return im
