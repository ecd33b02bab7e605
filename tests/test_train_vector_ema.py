"""ema_decay: the trainer keeps a moving average of the vectors (core.training.vector_ema) and saves, validates and
previews it; the raw vectors keep training. Real runs on the tiny model."""

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.training import guard
from core.training.config import TrainConfig
from core.training.trainer import Trainer
from core.training.vector_ema import VectorEMA
from train_helpers import make_images, tiny_config, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _state(out):
    return torch.load(out / "state" / "latest.pt", weights_only=True)


def _saved(path):
    from core.embeddings.formats import load_embedding

    return load_embedding(path).vectors.float()


def test_average_warms_up_and_swaps_back():
    start = torch.zeros(2, 3)
    ema = VectorEMA(start, 0.95)
    assert ema.current_decay() == pytest.approx(1 / 10)  # the first update is mostly the new vectors
    ema.update(torch.ones(2, 3))
    assert torch.allclose(ema.average, torch.full((2, 3), 0.9))
    for _ in range(500):
        ema.update(torch.ones(2, 3))
    assert ema.current_decay() == 0.95
    param = torch.nn.Parameter(torch.full((2, 3), 7.0))
    with ema.swapped_in(param):
        assert torch.equal(param.detach(), ema.average)
    assert torch.equal(param.detach(), torch.full((2, 3), 7.0))


def test_run_saves_the_average_of_its_steps_and_trains_the_raw_vectors(tiny_model_dir, tmp_path, monkeypatch):
    """Each step's vectors, as the run leaves them, folded by hand with the warm-up decay, equal what the run saved;
    the state keeps the raw vectors (those the optimizer steps), which differ from the saved average."""
    data = make_images(tmp_path / "data", n=2)
    seen = []

    real = guard.snapshot

    def recording(s):  # the guard's snapshot after every good step (and at the start): the raw vectors there
        seen.append(s.vectors.detach().clone())
        return real(s)

    monkeypatch.setattr(guard, "snapshot", recording)
    out = tmp_path / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=6, ema_decay=0.9), out, ListSink()).run()
    assert len(seen) == 8  # the loop's start, steps 1-6, the final save's
    raw_steps = seen[1:7]
    average = seen[0].clone()
    for n, v in enumerate(raw_steps):
        d = min(0.9, (1 + n) / (10 + n))
        average = d * average + (1 - d) * v
    assert torch.allclose(_saved(out / "tcat.safetensors"), average, atol=1e-6)
    assert torch.allclose(_state(out)["vectors"], raw_steps[-1])
    assert not torch.allclose(_saved(out / "tcat.safetensors"), raw_steps[-1], atol=1e-4)


def test_validation_sees_the_average(tiny_model_dir, tmp_path):
    """Same seed, same steps: the raw vectors train identically with and without ema_decay, so the validation loss
    differs only because it is taken on the average."""
    data = make_images(tmp_path / "data", n=2)
    losses = {}
    for decay in (0.0, 0.9):
        sink = ListSink()
        out = tmp_path / f"run-{decay}"
        Trainer(tiny_config(tiny_model_dir, data, steps=4, validate_every=2, ema_decay=decay), out, sink).run()
        losses[decay] = [e["val_loss"] for e in sink.of_type("validation")]
        losses[f"raw{decay}"] = _state(out)["vectors"]
    assert torch.equal(losses["raw0.0"], losses["raw0.9"])
    assert losses[0.0][0] == losses[0.9][0]  # step 0: the average is the initial vectors
    assert losses[0.0][1:] != losses[0.9][1:]


def test_resume_continues_the_average_exactly(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    straight = tmp_path / "straight"
    Trainer(tiny_config(tiny_model_dir, data, steps=8, save_every=2, ema_decay=0.8), straight, ListSink()).run()
    split = tmp_path / "split"
    first = Trainer(tiny_config(tiny_model_dir, data, steps=8, save_every=2, ema_decay=0.8), split, ListSink())
    first.poll_commands = lambda: ["stop"] if first.session.step == 4 else []
    assert first.run().step == 4
    Trainer(tiny_config(tiny_model_dir, data, steps=8, save_every=2, ema_decay=0.8), split, ListSink()).run(resume=True)
    assert torch.equal(_saved(split / "tcat.safetensors"), _saved(straight / "tcat.safetensors"))
    assert torch.equal(_saved(split / "embeddings" / "tcat-6.pt"), _saved(straight / "embeddings" / "tcat-6.pt"))
    assert _state(split)["ema"]["updates"] == 8


def test_ema_decay_is_validated_and_off_by_default():
    assert TrainConfig().ema_decay == 0.0
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(TiwizError, match="^ema_decay"):
            TrainConfig(ema_decay=bad).validate(require_paths=False)
