"""A NaN/inf loss is never applied: the vectors roll back, the user is warned, and a persistent NaN stops the run."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from core.errors import TiwizError
from core.events import CallbackSink, ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, tiny_config, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _nan_on_calls(monkeypatch, bad_calls):
    """Make the (dependency) UNet return NaN on the given 1-based forward calls."""
    original = UNet2DConditionModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        calls["n"] += 1
        out = original(self, *args, **kwargs)
        if bad_calls == "all" or calls["n"] in bad_calls:
            out.sample = out.sample * float("nan")
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", forward)


def test_nan_step_rolls_back_and_training_continues(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=2)
    _nan_on_calls(monkeypatch, {3})
    cfg = tiny_config(tiny_model_dir, data, steps=4, lr="0.05")
    sink = ListSink()
    seen = []  # (event, the live vectors when it was emitted)

    def record(event):
        sink.events.append(event)
        seen.append((event, trainer.session.vectors.detach().clone() if trainer.session else None))

    trainer = Trainer(cfg, tmp_path / "out", CallbackSink(record))
    summary = trainer.run()
    assert summary.finished and summary.step == 4
    warnings = [e for e in sink.of_type("warning") if "NaN" in e["message"]]
    assert len(warnings) == 1 and "rolled back" in warnings[0]["message"]
    # the vectors after the rollback equal the vectors after step 2
    after_step2 = next(v for e, v in seen if e["type"] == "step" and e["step"] == 2)
    at_warning = next(v for e, v in seen if e["type"] == "warning")
    assert torch.equal(after_step2, at_warning)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in sink.of_type("step"))
    assert torch.isfinite(trainer.session.vectors).all()


def test_persistent_nan_stops_with_error(tiny_model_dir, tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", n=2)
    _nan_on_calls(monkeypatch, "all")
    cfg = tiny_config(tiny_model_dir, data, steps=10, max_nan_steps=3)
    sink = ListSink()
    with pytest.raises(TiwizError, match="NaN/inf for 3 steps"):
        Trainer(cfg, tmp_path / "out", sink).run()
    assert len(sink.of_type("warning")) == 3
    assert "lower the learning rate" in sink.of_type("error")[0]["message"]
    assert not sink.of_type("finished")


def test_failed_preview_is_a_warning_not_the_end(tiny_model_dir, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", out_of_memory)
    data = make_images(tmp_path / "data", n=1)
    sink = ListSink()
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=2, preview_every=1), tmp_path / "out", sink).run()
    assert summary.finished and summary.step == 2
    assert sum("preview at step" in e["message"] for e in sink.of_type("warning")) == 3  # steps 0 (init), 1, 2


def test_schedule_that_ends_early_stops_there_and_says_so(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=1)
    sink = ListSink()
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=50, lr="0.01:2, 0.005:3"), tmp_path / "out", sink).run()
    assert summary.step == 3 and sink.of_type("started")[0]["max_steps"] == 3
    assert any("ends at step 3" in e["message"] for e in sink.of_type("warning"))
