"""The one per-image bucket assignment (core.prep.buckets.image_bucket / assign_buckets / image_fit) that the
doctor and the wizard share, and image sizes read from the header alone (header_size)."""

from __future__ import annotations

import pytest
from PIL import Image

from core.prep.buckets import Bucketer, assign_buckets, header_size, image_bucket, image_fit
from core.training.config import TrainConfig

SIZES = [(900, 1200), (1200, 800), (700, 700), (300, 200), (40, 300), (4000, 3000)]


@pytest.mark.parametrize("no_upscale", [True, False])
def test_assignment_is_the_trainers_choice(no_upscale):
    bucketer = Bucketer((512, 512), 256, 1024, no_upscale)
    groups = assign_buckets(((i, size) for i, size in enumerate(SIZES)), bucketer)
    for reso, members in groups.items():
        for i in members:
            chosen = bucketer.select(*SIZES[i])[0]
            assert (chosen if chosen[0] >= 64 and chosen[1] >= 64 else None) == reso
    assert sorted(i for members in groups.values() for i in members) == list(range(len(SIZES)))
    keys = list(groups)
    assert keys == sorted(keys, key=lambda k: (k is None, k or (0, 0)))  # sorted, too small last


def test_no_upscale_examples():
    bucketer = Bucketer((512, 512))
    assert image_bucket(bucketer, (900, 1200)) == (384, 512)  # shrunk to the 512² area keeping 3:4, cut to 64s
    assert image_bucket(bucketer, (300, 200)) == (256, 192)  # within the area: its own size, never upscaled
    assert image_bucket(bucketer, (40, 300)) is None  # a side under 64 px: no bucket
    assert image_bucket(Bucketer((512, 512), no_upscale=False), (300, 200)) == (640, 384)  # upscaled into a bucket


def test_image_fit_follows_the_config():
    sizes = dict(width=512, height=512)
    assert image_fit(TrainConfig(**sizes), (900, 1200)) == ("crop", (512, 512))
    assert image_fit(TrainConfig(**sizes, resize="stretch"), (900, 1200)) == ("stretch", (512, 512))
    assert image_fit(TrainConfig(**sizes, resize="none"), (901, 1203)) == ("none", (896, 1200))
    assert image_fit(TrainConfig(**sizes, buckets=True), (900, 1200)) == ("bucket", (384, 512))
    assert image_fit(TrainConfig(**sizes, buckets=True), (40, 300)) == ("skip", None)
    assert image_fit(TrainConfig(width=768, height=512, buckets=True, bucket_no_upscale=False),
                     (300, 200)) == ("bucket", Bucketer((768, 512), no_upscale=False).bucket(300, 200))


def test_header_size_applies_exif_orientation_like_the_loader(tmp_path):
    from core.prep.images import load_rgb

    im = Image.new("RGB", (300, 200), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert header_size(tmp_path / "rotated.jpg") == (200, 300) == load_rgb(tmp_path / "rotated.jpg").image.size


def test_header_size_reads_no_pixels(tmp_path):
    """A PNG cut off after its header still has a size: nothing past the header is read."""
    Image.effect_noise((640, 480), 64).convert("RGB").save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:200])
    assert header_size(tmp_path / "cut.png") == (640, 480)
    with pytest.raises(OSError):
        with Image.open(tmp_path / "cut.png") as im:
            im.load()
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(OSError):
        header_size(tmp_path / "text.png")
