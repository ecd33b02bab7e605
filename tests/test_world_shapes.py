"""The procedural shapes world: deterministic, captioned, and measurable by the colour measure the bench uses."""

import random

import numpy as np

from core import shapes


def _arrays(seed, n, **kw):
    return [np.asarray(im) for im, _c, _s in shapes.world_samples(seed, n, **kw)]


def test_same_seed_same_pixels_and_captions():
    a = list(shapes.world_samples(7, 12, concept_fraction=0.2))
    b = list(shapes.world_samples(7, 12, concept_fraction=0.2))
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


def test_held_out_concept_is_never_captioned():
    items = list(shapes.world_samples(0, 400, concept_fraction=0.1))
    concept = [(im, c) for im, c, s in items if s.concept]
    assert 10 < len(concept) < 80
    assert all(c == "" for _im, c in concept)
    # the concept's colours appear nowhere else in the world
    pink = np.array(shapes.CONCEPT_COLORS[0])
    for im, caption, spec in items:
        near = (np.abs(np.asarray(im).astype(int) - pink).sum(-1) < 30).mean()
        assert (near > 0.02) == spec.concept
    # and no caption names it
    assert not any("pink" in c or "teal" in c for c in shapes.all_captions())


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
