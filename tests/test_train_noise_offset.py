"""Offset noise (`noise_offset`, kohya's --noise_offset): training noise gets a per-image, per-channel constant;
validation keeps its fixed plain noise."""

import pytest
import torch
from diffusers import DDPMScheduler

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(model_dir, data, out, offset, monkeypatch):
    """Train 6 steps; return (validation losses, the channel means of every training noise tensor)."""
    means = []
    original = DDPMScheduler.add_noise

    def spy(self, latents, noise, timesteps):
        if torch.is_grad_enabled():  # training; validation runs under no_grad
            means.append(noise.mean(dim=(2, 3)).flatten())
        return original(self, latents, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", spy)
    cfg = tiny_config(model_dir, data, steps=6, batch_size=4, noise_offset=offset, validate_every=6, output=str(out))
    sink = ListSink()
    Trainer(cfg, out, sink).run()
    monkeypatch.setattr(DDPMScheduler, "add_noise", original)
    vals = [e["val_loss"] for e in sink.events if e["type"] == "validation"]
    return vals, torch.cat(means)


def test_offset_noise_shifts_channel_means_and_leaves_validation_alone(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=4)
    plain_vals, plain_means = _run(tiny_model_dir, data, tmp_path / "plain", 0.0, monkeypatch)
    off_vals, off_means = _run(tiny_model_dir, data, tmp_path / "offset", 0.5, monkeypatch)
    # 64 px -> 8x8 latents: the mean of 64 unit normals has std 1/8; with the offset, sqrt(0.5^2 + 1/64) ~ 0.52
    assert plain_means.numel() == off_means.numel() == 6 * 4 * 4
    assert float(plain_means.std()) < 0.2
    assert float(off_means.std()) > 0.35
    # validation uses its own fixed noise: identical before training starts, and training moved differently
    assert plain_vals[0] == off_vals[0]
    assert plain_vals[-1] != off_vals[-1]


@pytest.mark.parametrize("bad", [-0.1, 1.5, "lots"])
def test_bad_noise_offset_is_refused(tiny_model_dir, tmp_path, bad):
    with pytest.raises(TiwizError, match="^noise_offset"):
        tiny_config(tiny_model_dir, tmp_path, noise_offset=bad)
