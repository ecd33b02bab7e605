import numpy as np
import pytest
from PIL import Image

from core.prep.captions import clean_stem, training_caption as read_caption
from core.training.dataset import build_dataset, resize_image
from core.errors import TiwizError
from core.events import ListSink
from train_helpers import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "stem, caption",
    [
        ("00012-0-red_cat_on_a_mat", "red cat on a mat"),
        ("123 dog", "dog"),
        ("plain", "plain"),
        ("a__b", "a b"),
        ("2024-06-01_photo", "photo"),
    ],
)
def test_clean_stem(stem, caption):
    assert clean_stem(stem) == caption


def test_caption_from_txt_else_stem(tmp_path):
    (tmp_path / "01-x.png").write_bytes(b"")
    (tmp_path / "01-x.txt").write_text("a cat,\n  blue hat  \n")
    assert read_caption(tmp_path / "01-x.png") == "a cat, blue hat"
    assert read_caption(tmp_path / "0007-tall_tree.png") == "tall tree"


def _gradient(w, h):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), np.zeros((h, w, 1))], axis=2)
    return Image.fromarray(arr.astype(np.uint8))


def test_resize_modes():
    im = _gradient(200, 100)
    crop = resize_image(im, 64, 64, "crop")
    assert crop.size == (64, 64)
    # crop keeps the aspect: the centre third horizontally, so the red channel spans only the middle of 0..255
    red = np.asarray(crop)[:, :, 0]
    assert 50 < red[:, 0].mean() < 90 and 165 < red[:, -1].mean() < 205
    stretch = resize_image(im, 64, 64, "stretch")
    red = np.asarray(stretch)[:, :, 0]
    assert stretch.size == (64, 64) and red[:, 0].mean() < 10 and red[:, -1].mean() > 245
    native = resize_image(_gradient(203, 99), 64, 64, "none")
    assert native.size == (200, 96)
    with pytest.raises(TiwizError):
        resize_image(im, 64, 64, "fit")


def _write(folder, sizes):
    folder.mkdir(exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        _gradient(w, h).save(folder / f"{i:02d}-pic_{i}.png")
    return folder


@pytest.fixture(scope="module")
def vae(tiny_model_dir):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_model_dir / "vae", local_files_only=True)


def test_build_skips_bad_images_and_caches_latents(tmp_path, vae):
    folder = _write(tmp_path / "d", [(80, 64), (64, 96), (64, 64)])
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "notes.md").write_text("ignored")
    sink = ListSink()
    ds = build_dataset(folder, vae=vae, width=64, height=64, resize="crop", latent_sampling="once", seed=1, sink=sink)
    assert len(ds) == 3
    assert [i.caption for i in ds.items] == ["pic 0", "pic 1", "pic 2"]
    assert any("broken.png" in e["message"] for e in sink.of_type("warning"))
    lat = ds.latents([0, 1], None)
    assert lat.shape == (2, 4, 8, 8)
    again = build_dataset(folder, vae=vae, width=64, height=64, resize="crop", latent_sampling="once", seed=1)
    assert all((a.latent == b.latent).all() for a, b in zip(ds.items, again.items))
    det = build_dataset(folder, vae=vae, width=64, height=64, resize="crop", latent_sampling="deterministic", seed=1)
    assert (det.items[0].latent == det.items[0].mean).all()
    assert not (ds.items[0].latent == det.items[0].latent).all()


def test_random_sampling_resamples_from_the_given_generator(tmp_path, vae):
    import torch

    folder = _write(tmp_path / "d", [(64, 64), (64, 64)])
    ds = build_dataset(folder, vae=vae, width=64, height=64, resize="crop", latent_sampling="random", seed=1)
    a = ds.latents([0], torch.Generator().manual_seed(5))
    b = ds.latents([0], torch.Generator().manual_seed(5))
    c = ds.latents([0], torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_resize_batches_hold_equal_sizes(tmp_path, vae):
    import random

    folder = _write(tmp_path / "d", [(64, 64), (64, 96), (64, 64), (64, 96), (64, 96)])
    ds = build_dataset(folder, vae=vae, width=64, height=64, resize="none", latent_sampling="deterministic", seed=0)
    batches = ds.epoch_batches(random.Random(0), 2)
    assert sorted(i for b in batches for i in b) == list(range(5))
    for batch in batches:
        assert len({ds.items[i].size for i in batch}) == 1
        assert ds.latents(batch, None).shape[0] == len(batch)


def test_no_usable_images_is_an_error(tmp_path, vae):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TiwizError, match="no images"):
        build_dataset(empty, vae=vae, width=64, height=64, resize="crop", latent_sampling="once", seed=0)
    (empty / "x.png").write_bytes(b"garbage")
    with pytest.raises(TiwizError, match="could be read"):
        build_dataset(empty, vae=vae, width=64, height=64, resize="crop", latent_sampling="once", seed=0)
    with pytest.raises(TiwizError, match="not a folder"):
        build_dataset(tmp_path / "missing", vae=vae, width=64, height=64, resize="crop", latent_sampling="once", seed=0)


def test_source_images_untouched(tmp_path, vae):
    folder = _write(tmp_path / "d", [(100, 64)])
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    build_dataset(folder, vae=vae, width=64, height=64, resize="crop", latent_sampling="once", seed=0)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
