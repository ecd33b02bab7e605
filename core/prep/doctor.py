"""`tiwiz doctor`: is this folder a good training set? Torch-free (numpy, PIL, the CLIP tokenizer, OpenCV for faces).

Severity "error" means training on the folder cannot work as is (no images, unreadable files); "warning" means it
will train but probably worse; "info" is advice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from core.prep import phash
from core.prep.captions import IMAGE_KINDS, CaptionSet
from core.prep.doctor_captions import Finding, caption_findings, tag_findings
from core.errors import TiwizError

RECOMMENDED_MIN_IMAGES = 20
RECOMMENDED_MAX_IMAGES = 50
MIN_IMAGES_ERROR = 1
EXTREME_ASPECT = 2.0  # the default centre crop would keep less than half of the picture
SEVERITIES = ("error", "warning", "info")


@dataclass
class _Image:
    path: Path
    name: str
    size: tuple[int, int]
    fingerprint: phash.Fingerprint


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.seek(0)
        im.load()
        return ImageOps.exif_transpose(im) or im.copy()


def _detect_face(image: Image.Image) -> bool:
    import cv2
    import numpy as np

    gray = phash.to_gray(image)
    if max(gray.size) > 1024:
        gray.thumbnail((1024, 1024), Image.BILINEAR)
    arr = cv2.equalizeHist(np.asarray(gray, dtype=np.uint8))
    cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
    faces = cascade.detectMultiScale(arr, scaleFactor=1.1, minNeighbors=8, minSize=(60, 60))
    return len(faces) > 0


def _groups(pairs: set[tuple[int, int]], n: int) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for a, b in pairs:
        groups.setdefault(find(a), [])
    for i in range(n):
        if find(i) in groups:
            groups[find(i)].append(i)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def diagnose(folder: str | os.PathLike, width: int = 512, height: int = 512, bucketer=None,
             trigger: str = "") -> list[Finding]:
    """Check a training folder; findings sorted by severity (errors first), then by code. With a `bucketer`
    (core.prep.buckets, aspect-ratio buckets) an info finding per bucket lists its images, and extreme aspect
    ratios are no longer a warning (nothing is centre-cropped to the training shape). `trigger` (the embedding's
    name) is checked against the tags of tag captions."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TiwizError(f"{folder} is not a folder.")
    if width < 8 or height < 8:
        raise TiwizError("Training width and height must be at least 8 pixels.")
    captions = CaptionSet(folder)
    items = captions.items()
    findings: list[Finding] = []
    images: list[_Image] = []
    for item in items:
        try:
            img = _open(item.image)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
            findings.append(Finding("unreadable", "error", [item.image.name],
                                    f"{item.image.name} cannot be read as an image ({exc}); remove or replace it."))
            continue
        images.append(_Image(item.image, item.image.name, img.size, phash.fingerprint(img)))

    findings += _count_findings(len(images), len(items))
    findings += _size_findings(images, width, height, bucketer is None)
    if bucketer is not None:
        findings += _bucket_findings(images, bucketer)
    findings += caption_findings(items)
    findings += tag_findings(items, trigger)
    findings += _duplicate_findings(images)
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (order[f.severity], f.code, f.files))


def _count_findings(n_ok: int, n_all: int) -> list[Finding]:
    if n_all == 0:
        return [Finding("no-images", "error", [], f"No images found ({IMAGE_KINDS}).")]
    if n_ok < RECOMMENDED_MIN_IMAGES:
        severity = "error" if n_ok < MIN_IMAGES_ERROR else "warning"
        return [Finding("too-few-images", severity, [],
                        f"Only {n_ok} usable image{'s' if n_ok != 1 else ''}; "
                        f"{RECOMMENDED_MIN_IMAGES}–{RECOMMENDED_MAX_IMAGES} varied images are recommended.")]
    return []


def _bucket_findings(images: list[_Image], bucketer) -> list[Finding]:
    from core.prep.buckets import assign_buckets

    out = []
    for reso, members in assign_buckets(((im, im.size) for im in images), bucketer).items():
        names = [im.name for im in members]
        if reso is None:
            out.append(Finding("no-bucket", "warning", names,
                               f"Too small for any bucket (a side under 64 px, never upscaled): {', '.join(names)}; "
                               "these images are skipped."))
            continue
        detail = ", ".join(f"{im.name} ({im.size[0]}×{im.size[1]})" for im in members)
        out.append(Finding("bucket", "info", names, f"Bucket {reso[0]}×{reso[1]}: {detail}."))
    return out


def _size_findings(images: list[_Image], width: int, height: int, crop: bool = True) -> list[Finding]:
    out = []
    target = width / height
    for im in images:
        w, h = im.size
        if crop and (w < width or h < height):  # buckets never upscale
            out.append(Finding("too-small", "warning", [im.name],
                               f"{im.name} is {w}×{h}, smaller than the training size {width}×{height}; "
                               f"it will be upscaled and look soft."))
        ratio = (w / h) / target
        if crop and max(ratio, 1 / ratio) > EXTREME_ASPECT:
            out.append(Finding("extreme-aspect", "warning", [im.name],
                               f"{im.name} is {w}×{h}: a {width}×{height} centre crop keeps "
                               f"{100 / max(ratio, 1 / ratio):.0f}% of it; use --split or --focal-crop, "
                               f"or crop it by hand."))
    return out


def _duplicate_findings(images: list[_Image]) -> list[Finding]:
    fps = [im.fingerprint for im in images]
    same = {p for p in phash.candidate_pairs(fps) if phash.is_near_duplicate(fps[p[0]], fps[p[1]])}
    out = []
    for group in _groups(same, len(images)):
        names = [images[i].name for i in group]
        out.append(Finding("near-duplicate", "warning", names,
                           f"Near-duplicates (the same picture, resized or cropped): {', '.join(names)}. "
                           f"Keep one; duplicates overweight that picture."))
    flipped = {p for p in phash.candidate_pairs(fps, mirror=True)
               if p not in same and phash.is_near_duplicate(fps[p[0]], fps[p[1]], mirror=True)}
    faces: dict[int, bool] = {}
    for a, b in sorted(flipped):
        for i in (a, b):
            if i not in faces:
                faces[i] = _detect_face(_open(images[i].path))
        if faces[a] or faces[b]:
            names = [images[a].name, images[b].name]
            out.append(Finding("flipped-face", "warning", names,
                               f"{names[0]} and {names[1]} are mirror images of each other and show a face; faces are not "
                               f"symmetric, so mirrored copies harm likeness. Remove one."))
    return out


def summary(findings: list[Finding]) -> dict[str, int]:
    return {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
