"""The procedural shapes world: deterministic, captioned, and measurable by the colour measure the bench uses."""

import random

import numpy as np

from core.world import shapes


def _arrays(seed, n, **kw):
    return [np.asarray(im) for im, _c, _s in shapes.world_samples(seed, n, **kw)]


def test_same_seed_same_pixels_and_captions():
    a = list(shapes.world_samples(7, 12))
    b = list(shapes.world_samples(7, 12))
    assert [x[1] for x in a] == [x[1] for x in b]
    assert all(np.array_equal(np.asarray(x[0]), np.asarray(y[0])) for x, y in zip(a, b))
    c = _arrays(8, 12)
    assert not all(np.array_equal(x, y) for x, y in zip(_arrays(7, 12), c))


def test_captions_describe_the_image():
    for image, caption, spec in shapes.world_samples(3, 60):
        assert image.size == (64, 64) and image.mode == "RGB"
        assert caption == f"a {spec.color} {spec.shape} on a {spec.background} background"
        assert spec.color != spec.background
        assert caption in shapes.all_captions()


def test_dominant_colour_measure_reads_rendered_images():
    samples = list(shapes.world_samples(11, 200))
    hits = sum(shapes.dominant_colors(im) == (s.color, s.background) for im, _c, s in samples)
    assert hits == len(samples)
    # a flat image of one colour has that colour as background
    flat = shapes.render(shapes.ShapeSpec("circle", "red", "blue", 0.5, 0.5, 0.0001, 0))
    assert shapes.dominant_colors(flat)[1] == "blue"


def test_caption_variants_name_every_part():
    assert len(shapes.CAPTION_TEMPLATES) == len(shapes.CAPTION_WEIGHTS) and abs(sum(shapes.CAPTION_WEIGHTS) - 1) < 1e-9
    variants = shapes.caption_variants("red", "star", "blue")
    assert variants[0] == shapes.caption_for("red", "star", "blue") == "a red star on a blue background"
    assert len(set(variants)) == len(variants)
    assert all("red" in v and "star" in v for v in variants)
    assert len(shapes.all_specs()) == len(shapes.SHAPES) * len(shapes.COLORS) * (len(shapes.COLORS) - 1)


def test_held_out_concept_is_never_in_the_world():
    items = list(shapes.world_samples(0, 400))
    assert not any(s.concept or s.shape == shapes.CONCEPT_SHAPE for _im, _c, s in items)
    assert shapes.CONCEPT_SHAPE not in shapes.SHAPES
    assert not any(shapes.CONCEPT_SHAPE in c for c in shapes.all_captions())
    # the concept images show the concept's colours, and a shape unlike any world shape: a heart is mirror-symmetric
    # about the vertical axis and wider at the top than at the bottom
    for image in shapes.concept_samples(0, 8):
        assert shapes.dominant_colors(image) == (shapes.CONCEPT_COLOR, shapes.CONCEPT_BACKGROUND)
    upright = shapes.render(shapes.ShapeSpec("heart", "yellow", "purple", 0.5, 0.5, 0.4, 0.0, concept=True), 64)
    mask = (np.asarray(upright, dtype=int) - np.array(shapes.COLORS["yellow"])).__abs__().sum(-1) < 60
    rows = np.nonzero(mask.any(1))[0]
    top, bottom = mask[rows[0] + 4].sum(), mask[rows[-1] - 4].sum()
    assert top > 2 * bottom
    assert np.array_equal(mask, mask[:, ::-1]) or (mask != mask[:, ::-1]).mean() < 0.02


def test_concept_samples_vary_but_are_deterministic():
    a = [np.asarray(im) for im in shapes.concept_samples(1, 6)]
    b = [np.asarray(im) for im in shapes.concept_samples(1, 6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) == 6


def test_random_spec_keeps_shape_inside():
    rng = random.Random(0)
    for _ in range(500):
        s = shapes.random_spec(rng)
        assert s.size <= s.cx <= 1 - s.size and s.size <= s.cy <= 1 - s.size
