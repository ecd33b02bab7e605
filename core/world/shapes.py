"""The procedural "shapes world": deterministic images and captions from a seed, no files needed.

Every image is a flat-coloured shape on a flat background, captioned `a COLOR SHAPE on a BG background` (training
also uses a few rephrasings of it, see `caption_variants`). The held-out demo concept, a yellow heart on a purple
background, never appears in the world: the model knows yellow shapes and purple backgrounds but has never seen a
heart, and no caption names it. Textual inversion has to find it.

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

# The held-out concept: a shape the world does not have, in fixed colours; never part of the world model's training.
CONCEPT_SHAPE, CONCEPT_COLOR, CONCEPT_BACKGROUND = "heart", "yellow", "purple"
CONCEPT_NAME = "a yellow heart on a purple background"
CONCEPT_INIT_TEXT = "heart"  # what a user would type; the world model never trained this word

# Rephrasings used in training (the first is the canonical caption the bench prompts with), so the model reads colour
# roles from the words rather than from their positions, and short prompts such as a 2-vector embedding alone are not
# far from anything it saw.
CAPTION_TEMPLATES = (
    "a {color} {shape} on a {background} background",
    "{color} {shape}, {background} background",
    "a {background} background with a {color} {shape}",
    "{color} {shape} on {background}",
    "a {color} {shape}",
)
CAPTION_WEIGHTS = (0.5, 0.15, 0.15, 0.1, 0.1)

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
    return CAPTION_TEMPLATES[0].format(color=color, shape=shape, background=background)


def caption_variants(color: str, shape: str, background: str) -> list[str]:
    """Every training phrasing of one image's caption, in CAPTION_TEMPLATES order."""
    return [t.format(color=color, shape=shape, background=background) for t in CAPTION_TEMPLATES]


def random_spec(rng: random.Random, *, concept: bool = False, shape: str | None = None, color: str | None = None,
                background: str | None = None) -> ShapeSpec:
    """Draw a shape spec. Colours differ from the background; the shape stays fully inside the image."""
    names = list(COLORS)
    if concept:
        shape, color, background = CONCEPT_SHAPE, CONCEPT_COLOR, CONCEPT_BACKGROUND
    shape = shape or rng.choice(SHAPES)
    background = background or rng.choice(names)
    color = color or rng.choice([c for c in names if c != background])
    size = rng.uniform(0.24, 0.36)
    margin = size + 0.04
    cx = rng.uniform(margin, 1 - margin)
    cy = rng.uniform(margin, 1 - margin)
    angle = rng.uniform(-20, 20) if concept else rng.uniform(0, 360)  # a heart stays (nearly) upright
    return ShapeSpec(shape, color, background, cx, cy, size, angle, concept)


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
    # the held-out concept's shape (not in SHAPES): the classic parametric heart, scaled to radius ~1
    "heart": [(16 * math.sin(t) ** 3 / 17,
               -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) / 17 - 0.2)
              for t in (2 * math.pi * k / 64 for k in range(64))],
}


def render(spec: ShapeSpec, size: int = 64) -> Image.Image:
    """Render one spec as an RGB image (antialiased by supersampling)."""
    big = size * SUPERSAMPLE
    bg = COLORS[spec.background]
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    cx, cy, r = spec.cx * big, spec.cy * big, spec.size * big
    box = (cx - r, cy - r, cx + r, cy + r)
    inner = r * 0.55
    inner_box = (cx - inner, cy - inner, cx + inner, cy + inner)
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


def world_samples(seed: int, n: int, *, size: int = 64):
    """Yield `n` (image, canonical caption, spec) triples of the world, deterministic in `seed`. Never the concept."""
    rng = random.Random(seed)
    for _ in range(n):
        spec = random_spec(rng)
        yield render(spec, size), spec.caption, spec


def concept_samples(seed: int, n: int, *, size: int = 64):
    """Yield `n` images of the held-out concept (varied position, size and rotation)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield render(random_spec(rng, concept=True), size)


def all_specs() -> list[tuple[str, str, str]]:
    """Every (color, shape, background) the world has."""
    return [(c, s, b) for s in SHAPES for c in COLORS for b in COLORS if b != c]


def all_captions() -> list[str]:
    return [caption_for(c, s, b) for c, s, b in all_specs()]


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
