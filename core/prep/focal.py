"""Auto focal-point crop (A1111's modules/textual_inversion/autocrop.py), with its known bugs fixed.

Three detectors each give a set of points; each non-empty set is weighted w_i / Σw (over non-empty sets), and a
weight of 0 turns the detector off. A1111 centres the crop on the weighted mean of the sets' centroids; with a face on
one side of a wide canvas and a busy region on the other, that mean lands in the gap and the crop shows neither. Here
every window position along the free axis is scored by the weighted share of each set's points it covers, and:
- a detected face is never cut: windows that hold the largest face whole come first, then those holding the most
  faces whole, then those cutting the fewest;
- among those, the window covering the most weighted interest wins (ties: the one nearest A1111's weighted mean,
  so an image with evenly spread interest crops as before).
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
    focus: Point  # A1111's weighted mean of the centroids (the tie-break); the crop is `box`
    scaled_size: tuple[int, int]
    points: dict[str, list[Point]]  # detector name -> points (scaled-image coordinates)
    centroids: dict[str, Point]  # detector name -> weighted centroid
    timings: dict[str, float] = field(default_factory=dict)  # detector name -> CPU seconds
    scaled: Image.Image | None = None
    score: float = 0.0  # weighted share of the interest inside `box` (0..1)
    faces_kept: int = 0  # faces wholly inside `box`

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


def face_box(p: Point, margin: float = 0.0) -> tuple[float, float, float, float]:
    """The face rectangle of a `detect_faces` point (the point sits at a third of the face's height), grown by
    `margin` × its size on every side."""
    half, grow = p.size / 2, p.size * margin
    return p.x - half - grow, p.y - p.size / 3 - grow, p.x + half + grow, p.y + 2 * p.size / 3 + grow


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

    box, score, kept = best_window(scaled.size, crop_w, crop_h, points, centroids, focus)
    return FocalResult(scaled.crop(box), box, focus, scaled.size, points, centroids, timings,
                       scaled if keep_scaled else None, score, kept)


FACE_MARGIN = 0.15  # room around a face box (hair, chin) when the crop allows it


def best_window(size: tuple[int, int], crop_w: int, crop_h: int, points: dict[str, list[Point]],
                centroids: dict[str, Point], focus: Point) -> tuple[tuple[int, int, int, int], float, int]:
    """The crop box (x1, y1, x2, y2), its interest score and the number of faces it keeps whole. Every position is
    tried along each axis the image is larger than the crop in (the scaled image covers the crop, so usually one)."""
    width, height = size
    xs = np.arange(0, width - crop_w + 1)
    ys = np.arange(0, height - crop_h + 1)
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    x1, y1 = gx.ravel().astype(np.float64), gy.ravel().astype(np.float64)
    x2, y2 = x1 + crop_w, y1 + crop_h

    score = np.zeros_like(x1)
    for name, centroid in centroids.items():
        pts = points[name]
        if name == "face":
            continue  # scored below, as whole boxes
        px = np.array([p.x for p in pts])[None, :]
        py = np.array([p.y for p in pts])[None, :]
        pw = np.array([p.weight for p in pts])[None, :]
        inside = (px >= x1[:, None]) & (px < x2[:, None]) & (py >= y1[:, None]) & (py < y2[:, None])
        score += centroid.weight * (inside * pw).sum(axis=1) / pw.sum()

    faces = points.get("face") or []
    rank_keys: list[np.ndarray] = []
    kept = np.zeros_like(x1)
    if faces:
        def whole(margin: float) -> np.ndarray:
            boxes = np.array([face_box(f, margin) for f in faces])  # [n, 4]
            bx1, by1, bx2, by2 = (np.clip(boxes[:, i], 0, (width, height)[i % 2])[None, :] for i in range(4))
            return (bx1 >= x1[:, None]) & (by1 >= y1[:, None]) & (bx2 <= x2[:, None]) & (by2 <= y2[:, None])

        boxes = np.array([face_box(f) for f in faces])
        overlap = ((boxes[None, :, 0] < x2[:, None]) & (boxes[None, :, 2] > x1[:, None])
                   & (boxes[None, :, 1] < y2[:, None]) & (boxes[None, :, 3] > y1[:, None]))
        whole_bare, whole_margin = whole(0.0), whole(FACE_MARGIN)
        cut = overlap & ~whole_bare
        largest = int(np.argmax([f.size for f in faces]))
        kept = whole_bare.sum(axis=1).astype(np.float64)
        score += centroids["face"].weight * whole_bare.sum(axis=1) / len(faces) if "face" in centroids else 0
        rank_keys = [whole_bare[:, largest], kept, -cut.sum(axis=1), whole_margin.sum(axis=1)]
    centre_dist = -np.hypot(x1 + crop_w / 2 - focus.x, y1 + crop_h / 2 - focus.y)
    # np.lexsort sorts by the last key first; the best window is the last row.
    order = np.lexsort([centre_dist, np.round(score, 9), *reversed(rank_keys)])
    best = int(order[-1])
    box = (int(x1[best]), int(y1[best]), int(x1[best]) + crop_w, int(y1[best]) + crop_h)
    return box, float(score[best]), int(kept[best])


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
    label = f"crop: score {result.score:.2f}"
    if result.points.get("face"):
        label += f", faces kept {result.faces_kept}/{len(result.points['face'])}"
    d.text((x1 + 6, y1 + 6), label, fill="#0F0")
    return im
