"""`loss_weighting = "velocity"`: an epsilon model's training loss is weighted by 1/alpha_bar(t) (normalised by its
mean over t); v-prediction models and the validation loss are unaffected."""

import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(model_dir, data, out, weighting, monkeypatch, steps=3):
    timesteps = []
    original = DDPMScheduler.add_noise

    def spy(self, latents, noise, t):
        if torch.is_grad_enabled():  # training only; validation runs under no_grad
            timesteps.append(int(t[0]))
        return original(self, latents, noise, t)

    monkeypatch.setattr(DDPMScheduler, "add_noise", spy)
    cfg = tiny_config(model_dir, data, steps=steps, batch_size=1, loss_weighting=weighting, validate_every=steps,
                      output=str(out))
    sink = ListSink()
    Trainer(cfg, out, sink).run()
    monkeypatch.setattr(DDPMScheduler, "add_noise", original)
    losses = [e["loss"] for e in sink.events if e["type"] == "step"]
    vals = [e["val_loss"] for e in sink.events if e["type"] == "validation"]
    return losses, vals, timesteps


def test_velocity_weights_the_epsilon_loss_by_inverse_alpha_bar(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=2)
    plain, plain_vals, t_plain = _run(tiny_model_dir, data, tmp_path / "plain", "none", monkeypatch)
    weighted, weighted_vals, t_weighted = _run(tiny_model_dir, data, tmp_path / "velocity", "velocity", monkeypatch)
    assert t_plain == t_weighted  # same seed: same timesteps and noise
    sched = DDPMScheduler.from_pretrained(tiny_model_dir / "scheduler")
    inv = 1.0 / sched.alphas_cumprod
    expected = plain[0] * float(inv[t_plain[0]] / inv.mean())
    # step 1 sees identical vectors, noise and timestep, so only the weight differs
    assert weighted[0] == pytest.approx(expected, rel=1e-4)
    assert plain_vals[0] == weighted_vals[0]  # validation stays plain MSE


def test_velocity_changes_nothing_for_v_prediction(tiny_model_dir, tmp_path, monkeypatch):
    vmodel = tmp_path / "vmodel"
    shutil.copytree(tiny_model_dir, vmodel)
    sched_file = vmodel / "scheduler" / "scheduler_config.json"
    sched_file.write_text(json.dumps(dict(json.loads(sched_file.read_text()), prediction_type="v_prediction")))
    data = make_images(tmp_path / "data", n=2)
    plain, _, _ = _run(vmodel, data, tmp_path / "plain", "none", monkeypatch)
    weighted, _, _ = _run(vmodel, data, tmp_path / "velocity", "velocity", monkeypatch)
    assert plain == weighted


def test_unknown_weighting_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(TiwizError, match="^loss_weighting"):
        tiny_config(tiny_model_dir, tmp_path, loss_weighting="snr")
