"""Aspect-ratio buckets (core.prep.buckets) against kohya-ss/sd-scripts, and the dataset/trainer using them.

The reference values below were produced by running kohya's own `library/model_util.make_bucket_resolutions` and
`library/train_util.BucketManager.select_bucket` (sd-scripts commit 48d368fa) on these sizes; (bucket, resized size)
per image, with upscaling allowed (False) and with --bucket_no_upscale (True).
"""

import pytest
from PIL import Image

from core.prep.buckets import Bucketer, make_bucket_resolutions, resize_to_bucket

SETS, ASSIGN = {}, {}
SIZES = [(512, 512), (640, 480), (480, 640), (1024, 768), (1920, 1080), (1080, 1920), (300, 900), (2000, 500), (513, 511), (100, 700), (4000, 3000), (256, 256), (1200, 800), (333, 1000)]
SETS['512'] = [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256)]
ASSIGN[('512', False)] = [((512, 512), (512, 512)), ((576, 448), (597, 448)), ((448, 576), (448, 597)), ((576, 448), (597, 448)), ((640, 384), (683, 384)), ((384, 640), (384, 683)), ((256, 832), (277, 832)), ((1024, 256), (1024, 256)), ((512, 512), (514, 512)), ((256, 1024), (256, 1792)), ((576, 448), (597, 448)), ((512, 512), (512, 512)), ((640, 384), (640, 427)), ((256, 832), (277, 832))]
ASSIGN[('512', True)] = [((512, 512), (512, 512)), ((512, 384), (512, 384)), ((384, 512), (384, 512)), ((512, 384), (512, 384)), ((640, 384), (683, 384)), ((384, 640), (384, 683)), ((256, 768), (256, 768)), ((1024, 256), (1024, 256)), ((512, 448), (513, 511)), ((64, 640), (100, 700)), ((512, 384), (512, 384)), ((256, 256), (256, 256)), ((576, 384), (576, 384)), ((256, 768), (256, 769))]
SETS['512x768'] = [(256, 1024), (320, 1024), (384, 896), (384, 960), (384, 1024), (448, 832), (512, 704), (512, 768), (576, 576), (576, 640), (640, 576), (704, 512), (768, 512), (832, 448), (896, 384), (960, 384), (1024, 256), (1024, 320), (1024, 384)]
ASSIGN[('512x768', False)] = [((576, 576), (576, 576)), ((704, 512), (704, 528)), ((512, 704), (528, 704)), ((704, 512), (704, 528)), ((832, 448), (832, 468)), ((448, 832), (468, 832)), ((320, 1024), (341, 1024)), ((1024, 256), (1024, 256)), ((576, 576), (578, 576)), ((256, 1024), (256, 1792)), ((704, 512), (704, 528)), ((576, 576), (576, 576)), ((768, 512), (768, 512)), ((320, 1024), (341, 1024))]
ASSIGN[('512x768', True)] = [((512, 512), (512, 512)), ((640, 448), (640, 480)), ((448, 640), (480, 640)), ((704, 512), (704, 528)), ((768, 448), (796, 448)), ((448, 768), (448, 796)), ((256, 896), (300, 900)), ((1024, 256), (1024, 256)), ((512, 448), (513, 511)), ((64, 640), (100, 700)), ((704, 512), (704, 528)), ((256, 256), (256, 256)), ((768, 512), (768, 512)), ((320, 960), (333, 1000))]
MAX_RESO = {"512": (512, 512), "512x768": (512, 768)}


@pytest.mark.parametrize("key", sorted(SETS))
def test_bucket_set_matches_kohya(key):
    assert make_bucket_resolutions(MAX_RESO[key], 256, 1024, 64) == SETS[key]


@pytest.mark.parametrize("key, no_upscale", sorted(ASSIGN))
def test_assignment_matches_kohya(key, no_upscale):
    bucketer = Bucketer(MAX_RESO[key], 256, 1024, no_upscale)
    got = [bucketer.select(w, h)[:2] for w, h in SIZES]
    assert got == ASSIGN[(key, no_upscale)]
    for (reso, resized), (w, h) in zip(got, SIZES):
        assert reso[0] % 64 == 0 and reso[1] % 64 == 0
        assert resized[0] >= reso[0] and resized[1] >= reso[1]  # the crop never pads
        if no_upscale:
            assert resized[0] <= w and resized[1] <= h  # never upscaled


def test_resize_to_bucket_crops_the_centre():
    im = Image.new("RGB", (320, 100), (0, 0, 0))
    im.paste((255, 0, 0), (110, 0, 210, 100))  # a red middle
    out, (left, top) = resize_to_bucket(im, Bucketer((128, 128), 64, 256, True))
    # 320x100 shrunk into the 128x128 area keeping 3.2:1 (205x64), then the centre 192x64 (multiples of 64) kept
    assert out.size == (192, 64) and (left, top) == (6, 0)
    assert out.getpixel((96, 32))[0] > 200 and out.getpixel((2, 32))[0] < 50


def test_too_small_for_any_bucket():
    with pytest.raises(ValueError, match="at least 64 px"):
        resize_to_bucket(Image.new("RGB", (40, 200)), Bucketer((128, 128), 64, 256, True))


def test_dataset_keeps_buckets_apart_and_trains(tiny_model_dir, tmp_path):
    import random

    import torch

    from core.events import ListSink
    from core.prep.buckets import bucketer_for
    from core.training.config import TrainConfig
    from core.training.dataset import build_dataset
    from core.training.trainer import Trainer
    from train_helpers import make_images, tiny_config

    torch.set_num_threads(1)
    data = tmp_path / "data"
    make_images(data, n=3, size=(128, 64), seed=1)
    for i, p in enumerate(sorted(data.glob("*.png"))):
        p.rename(data / f"wide{i}.png")
    make_images(data, n=3, size=(64, 128), seed=2)
    make_images(data, n=2, size=(96, 96), seed=3)
    cfg = tiny_config(tiny_model_dir, data, width=128, height=128, buckets=True, bucket_min_side=64)
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_model_dir / "vae")
    ds = build_dataset(data, vae=vae, width=128, height=128, resize="crop", latent_sampling="once", seed=0,
                       bucketer=bucketer_for(cfg))
    sizes = sorted({item.size for item in ds.items})
    assert sizes == [(64, 64), (64, 128), (128, 64)]  # 96x96 fits the area: not upscaled, cut to 64x64
    for item in ds.items:
        assert tuple(item.latent.shape[1:]) == (item.size[1] // 8, item.size[0] // 8)
    for batch in ds.epoch_batches(random.Random(0), 3):
        assert len({ds.items[i].size for i in batch}) == 1  # never two buckets in one batch
        ds.latents(batch, None)  # stackable
    sink = ListSink()
    Trainer(TrainConfig.from_dict(dict(cfg.to_dict(), steps=3, batch_size=2, holdout=0)), tmp_path / "run",
            sink).run()
    assert any((e.TYPE if hasattr(e, "TYPE") else e["type"]) == "finished" for e in sink.events)


def test_doctor_shows_each_images_bucket(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from core.prep.doctor import diagnose

    for name, size in (("wide.png", (1200, 600)), ("tall.png", (600, 1200)), ("square.png", (800, 800)),
                       ("tiny.png", (40, 300))):
        Image.new("RGB", size, (90, 120, 200)).save(tmp_path / name)
    findings = diagnose(tmp_path, 512, 512, bucketer=Bucketer((512, 512)))
    buckets = {f.message.split(":")[0]: f.files for f in findings if f.code == "bucket"}
    assert buckets == {"Bucket 640×320": ["wide.png"], "Bucket 320×640": ["tall.png"],
                       "Bucket 512×512": ["square.png"]}
    assert [f.files for f in findings if f.code == "no-bucket"] == [["tiny.png"]]
    assert not [f for f in findings if f.code in ("extreme-aspect", "too-small")]  # nothing is cropped or upscaled
    assert [f.files for f in diagnose(tmp_path, 512, 512) if f.code == "extreme-aspect"]  # without buckets it is
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "core.cli", "doctor", str(tmp_path), "--buckets"], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert "Bucket 640×320" in out.stdout, out.stdout + out.stderr
