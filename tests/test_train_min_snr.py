"""`loss_weighting = "min_snr"` (Min-SNR-gamma): the weights numerically, their equivalence across epsilon and
v-prediction, and the trainer applying them to the training loss only."""

import json
import shutil

import pytest
import torch
from diffusers import DDPMScheduler

from core.events import ListSink
from core.training.loss_weights import timestep_weights
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sched():
    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def test_min_snr_weights_by_hand():
    ac = _sched().alphas_cumprod
    t = torch.tensor([0, 100, 400, 999])
    snr = ac[t] / (1 - ac[t])
    w_eps = timestep_weights(ac, t, "min_snr", "epsilon", 5.0)
    w_v = timestep_weights(ac, t, "min_snr", "v_prediction", 5.0)
    for i in range(len(t)):
        s = float(snr[i])
        assert float(w_eps[i]) == pytest.approx(min(s, 5.0) / s, rel=1e-5)
        assert float(w_v[i]) == pytest.approx(min(s, 5.0) / (s + 1), rel=1e-5)
    assert float(snr[0]) > 5 > float(snr[-1])  # both sides of gamma are exercised
    assert float(w_eps[-1]) == pytest.approx(1.0)  # noisy steps (SNR < gamma) keep full weight on epsilon
    assert timestep_weights(ac, t, "none", "epsilon") is None
    assert timestep_weights(ac, t, "velocity", "v_prediction") is None


def test_min_snr_is_the_same_objective_for_epsilon_and_v():
    """Both weightings equal min(SNR, gamma) times the x0 error, for the same prediction."""
    sched = _sched()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 4, 8, 8, generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    eps_hat = eps + 0.1 * torch.randn(x0.shape, generator=gen)
    t = torch.tensor([5, 200, 600, 950])
    ac = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = sched.add_noise(x0, eps, t)
    x0_hat = (noisy - (1 - ac).sqrt() * eps_hat) / ac.sqrt()
    v, v_hat = sched.get_velocity(x0, eps, t), sched.get_velocity(x0_hat, eps_hat, t)

    def mse(a, b):
        return ((a - b) ** 2).mean(dim=(1, 2, 3))

    snr = (ac / (1 - ac)).flatten()
    by_eps = mse(eps_hat, eps) * timestep_weights(sched.alphas_cumprod, t, "min_snr", "epsilon", 5.0)
    by_v = mse(v_hat, v) * timestep_weights(sched.alphas_cumprod, t, "min_snr", "v_prediction", 5.0)
    by_x0 = mse(x0_hat, x0) * torch.clamp(snr, max=5.0)
    assert torch.allclose(by_eps, by_x0, rtol=1e-3)
    assert torch.allclose(by_v, by_x0, rtol=1e-3)


def _first_losses(model_dir, data, out, weighting, monkeypatch, gamma=5.0):
    seen = []
    original = DDPMScheduler.add_noise

    def spy(self, latents, noise, t):
        if torch.is_grad_enabled():
            seen.append(int(t[0]))
        return original(self, latents, noise, t)

    monkeypatch.setattr(DDPMScheduler, "add_noise", spy)
    cfg = tiny_config(model_dir, data, steps=2, batch_size=1, loss_weighting=weighting, min_snr_gamma=gamma,
                      validate_every=2, output=str(out))
    sink = ListSink()
    Trainer(cfg, out, sink).run()
    monkeypatch.setattr(DDPMScheduler, "add_noise", original)
    events = [e.to_json() if hasattr(e, "to_json") else e for e in sink.events]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    vals = [e["val_loss"] for e in events if e["type"] == "validation"]
    return losses, vals, seen


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_trainer_applies_min_snr_to_training_only(tiny_model_dir, tmp_path, monkeypatch, prediction):
    model = tiny_model_dir
    if prediction == "v_prediction":
        model = tmp_path / "vmodel"
        shutil.copytree(tiny_model_dir, model)
        f = model / "scheduler" / "scheduler_config.json"
        f.write_text(json.dumps(dict(json.loads(f.read_text()), prediction_type="v_prediction")))
    data = make_images(tmp_path / "data", n=2)
    plain, plain_vals, t_plain = _first_losses(model, data, tmp_path / "plain", "none", monkeypatch)
    weighted, weighted_vals, t_w = _first_losses(model, data, tmp_path / "snr", "min_snr", monkeypatch)
    assert t_plain == t_w
    sched = DDPMScheduler.from_pretrained(model / "scheduler")
    w = timestep_weights(sched.alphas_cumprod, torch.tensor([t_plain[0]]), "min_snr", prediction, 5.0)
    assert weighted[0] == pytest.approx(plain[0] * float(w[0]), rel=1e-4)
    assert plain_vals[0] == weighted_vals[0]  # the validation loss is never weighted
