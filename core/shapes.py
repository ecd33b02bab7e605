"""The procedural "shapes world": deterministic images and captions from a seed, no files needed.

Every image is a flat-coloured shape on a flat background, captioned `a COLOR SHAPE on a BG background`. The held-out
demo concept (a pink-and-teal segmented ring on a black background) appears in the world model's training only with
an empty caption, so the model can draw it but no word names it: textual inversion has to find it.

Torch-free: numpy and Pillow only.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (245, 220, 30),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")

# The held-out concept: never captioned, only ever seen by the world model as an unconditional sample.
CONCEPT_COLORS = ((255, 110, 190), (0, 190, 180))  # pink, teal
CONCEPT_BG = COLORS["black"]
CONCEPT_NAME = "pink-and-teal segmented ring on a black background"
CONCEPT_INIT_TEXT = "ring"

SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    color: str
    background: str
    cx: float  # centre, as a fraction of the image size
    cy: float
    size: float  # outer radius, as a fraction of the image size
    angle: float  # degrees
    concept: bool = False

    @property
    def caption(self) -> str:
        if self.concept:
            return ""
        return caption_for(self.color, self.shape, self.background)


def caption_for(color: str, shape: str, background: str) -> str:
    return f"a {color} {shape} on a {background} background"


def random_spec(rng: random.Random, *, concept: bool = False, shape: str | None = None, color: str | None = None,
                background: str | None = None) -> ShapeSpec:
    """Draw a shape spec. Colours differ from the background; the shape stays fully inside the image."""
    names = list(COLORS)
    if concept:
        shape, color, background = "ring", "pink", "black"
    shape = shape or rng.choice(SHAPES)
    background = background or rng.choice(names)
    color = color or rng.choice([c for c in names if c != background])
    size = rng.uniform(0.24, 0.36)
    margin = size + 0.04
    cx = rng.uniform(margin, 1 - margin)
    cy = rng.uniform(margin, 1 - margin)
    return ShapeSpec(shape, color, background, cx, cy, size, rng.uniform(0, 360), concept)


def _polygon(points, cx, cy, r, angle_deg):
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in points]


def _star_points(n=5, inner=0.45):
    pts = []
    for i in range(2 * n):
        rad = 1.0 if i % 2 == 0 else inner
        t = math.pi * i / n - math.pi / 2
        pts.append((rad * math.cos(t), rad * math.sin(t)))
    return pts


_UNIT = {
    "square": [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)],
    "triangle": [(0.0, -1.0), (0.87, 0.5), (-0.87, 0.5)],
    "star": _star_points(),
    "cross": [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1), (-0.33, 1),
              (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)],
}


def render(spec: ShapeSpec, size: int = 64) -> Image.Image:
    """Render one spec as an RGB image (antialiased by supersampling)."""
    big = size * SUPERSAMPLE
    bg = CONCEPT_BG if spec.concept else COLORS[spec.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    cx, cy, r = spec.cx * big, spec.cy * big, spec.size * big
    box = (cx - r, cy - r, cx + r, cy + r)
    inner = r * 0.55
    inner_box = (cx - inner, cy - inner, cx + inner, cy + inner)
    if spec.concept:
        segments = 6
        for i in range(segments):
            start = spec.angle + i * 360 / segments
            draw.pieslice(box, start, start + 360 / segments, fill=CONCEPT_COLORS[i % 2])
        draw.ellipse(inner_box, fill=bg)
    else:
        fg = COLORS[spec.color]
        if spec.shape == "circle":
            draw.ellipse(box, fill=fg)
        elif spec.shape == "ring":
            draw.ellipse(box, fill=fg)
            draw.ellipse(inner_box, fill=bg)
        else:
            angle = spec.angle if spec.shape != "square" else spec.angle % 90
            draw.polygon(_polygon(_UNIT[spec.shape], cx, cy, r, angle), fill=fg)
    return img.resize((size, size), Image.Resampling.BOX)


def world_samples(seed: int, n: int, *, size: int = 64, concept_fraction: float = 0.0):
    """Yield `n` (image, caption, spec) triples, deterministic in `seed`. A fraction of them are the uncaptioned
    held-out concept (caption "")."""
    rng = random.Random(seed)
    for _ in range(n):
        concept = concept_fraction > 0 and rng.random() < concept_fraction
        spec = random_spec(rng, concept=concept)
        yield render(spec, size), spec.caption, spec


def concept_samples(seed: int, n: int, *, size: int = 64):
    """Yield `n` images of the held-out concept (varied position, size and rotation)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield render(random_spec(rng, concept=True), size)


def all_captions() -> list[str]:
    return [caption_for(c, s, b) for s in SHAPES for c in COLORS for b in COLORS if b != c]


def nearest_color(rgb) -> str:
    """The palette colour name nearest to an RGB triple."""
    r, g, b = (float(v) for v in rgb)
    return min(COLORS, key=lambda k: (COLORS[k][0] - r) ** 2 + (COLORS[k][1] - g) ** 2 + (COLORS[k][2] - b) ** 2)


def dominant_colors(img: Image.Image) -> tuple[str, str]:
    """(foreground, background) palette colours of an image: each pixel is classified to its nearest palette colour;
    the background is the commonest class on the border, the foreground the commonest other class."""
    import numpy as np

    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    palette = np.array(list(COLORS.values()), dtype=np.float32)
    names = list(COLORS)
    dist = ((arr[:, :, None, :] - palette[None, None]) ** 2).sum(-1)
    cls = dist.argmin(-1)
    border = np.concatenate([cls[0], cls[-1], cls[:, 0], cls[:, -1]])
    bg = int(np.bincount(border, minlength=len(names)).argmax())
    counts = np.bincount(cls.ravel(), minlength=len(names))
    counts[bg] = 0
    fg = int(counts.argmax())
    return names[fg], names[bg]
