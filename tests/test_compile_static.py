"""The captured step's code path on a CPU (core.training.step_plan + core.training.capture with impl "static"): host
draws into static buffers, the loss from those buffers, the gradient kept in one buffer. Nothing is captured (CUDA
graphs need a GPU: tests/test_cuda_capture.py), so on a CPU it must train bit for bit like the eager step, resume
exactly, and the optimizer-state binding the update graph relies on must survive a rollback's load_state_dict."""

import pytest
import torch

from core.events import ListSink
from core.runs.run_events import EndReason
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

# Every random draw of a step: resampled latents, offset noise, shuffled and dropped tags, template lines, the data
# order, accumulation over batches of 2 (the last batch of an epoch is short: a second input shape), min-SNR weights
# and norm clipping with a schedule.
OPTIONS = dict(latent_sampling="random", noise_offset=0.05, shuffle_tags=True, tag_dropout=0.3, grad_accum=2,
               batch_size=2, loss_weighting="min_snr", lr="0.05:4, 0.02", template="subject_filewords",
               clip_grad="norm", clip_grad_value="0.5:3, 1.0", save_every=3)


def _train(model_dir, data, out, impl=None, steps=8, resume=False, stop_at=None, **changes):
    sink = ListSink()
    trainer = Trainer(tiny_config(model_dir, data, steps=steps, **{**OPTIONS, **changes}), out, sink)
    trainer.capture_impl = impl
    if stop_at is not None:
        trainer.poll_commands = lambda: ["stop"] if trainer.session.step == stop_at else []
    outcome = trainer.run(resume=resume)
    return trainer, sink, outcome


def _losses(sink):
    return [e["loss"] for e in sink.of_type("step")]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_captured_code_path_trains_bit_for_bit_like_eager(family, tiny_model_dir, tiny_sdxl_dir, tmp_path):
    model = tiny_model_dir if family == "sd1" else tiny_sdxl_dir
    data = make_images(tmp_path / "data", n=3)
    eager, eager_sink, _ = _train(model, data, tmp_path / "eager")
    static, static_sink, outcome = _train(model, data, tmp_path / "static", impl="static")
    assert outcome.finished and outcome.step == 8
    plan = static_sink.of_type("compile")
    assert plan[0]["mode"] == "static" and "set by the caller" in plan[0]["reason"]
    assert eager_sink.of_type("compile")[0]["mode"] == "eager"  # compile auto on a CPU
    assert _losses(static_sink) == _losses(eager_sink)
    assert torch.equal(static.session.vectors, eager.session.vectors)
    assert static.session.vectors.grad is not None  # the one gradient buffer, kept between steps
    moved = (eager.session.vectors - _step3_vectors(eager)).abs().max().item()
    assert moved > 1e-4, "the vectors barely moved: the comparison would mean nothing"


def _step3_vectors(trainer):
    """The vectors of the step-3 checkpoint (SDXL: clip_l then clip_g, the parameter's column order)."""
    from safetensors.torch import load_file

    tensors = load_file(str(trainer.out_dir / "embeddings" / "tcat-3.safetensors"))
    parts = [tensors[k] for k in ("clip_l", "clip_g")] if "clip_g" in tensors else list(tensors.values())
    return torch.cat([t.float() for t in parts], dim=1)


def test_a_stopped_captured_run_resumes_exactly(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=3)
    _train(tiny_model_dir, data, tmp_path / "straight", impl="static", steps=10)
    split = tmp_path / "split"
    _, _, first = _train(tiny_model_dir, data, split, impl="static", steps=10, stop_at=5)
    assert first.reason is EndReason.STOP and first.step == 5
    trainer, sink, outcome = _train(tiny_model_dir, data, split, impl="static", steps=10, resume=True)
    assert outcome.finished and sink.of_type("started")[0]["step"] == 5
    straight = torch.load(tmp_path / "straight" / "state" / "latest.pt", weights_only=True)
    resumed = torch.load(split / "state" / "latest.pt", weights_only=True)
    assert torch.equal(resumed["vectors"], straight["vectors"])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(resumed["optimizer"]["state"][0][key], straight["optimizer"]["state"][0][key])


def test_a_rollback_refills_the_state_the_update_graph_reads(tiny_model_dir, tmp_path):
    """CapturedStep._bind_state on real optimizer state: after load_state_dict (a guard rollback, a resume) replaced
    the state tensors, their values are copied into the tensors a captured update reads, which stay the optimizer's."""
    from core.training.capture import CapturedStep

    vectors = torch.nn.Parameter(torch.randn(2, 8))
    optimizer = torch.optim.AdamW([vectors], lr=0.1, weight_decay=0.0)
    runner = CapturedStep(lambda buffers: None, vectors, optimizer, impl="cuda_graph")
    runner._bind_state()  # before the first capture: AdamW's state made here, `step` a tensor on the device
    held = dict(runner._state)
    assert set(held) == {"step", "exp_avg", "exp_avg_sq"} and held["step"].dtype == torch.float32
    saved = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    vectors.grad = torch.ones_like(vectors)
    optimizer.step()  # the state moves on...
    assert held["step"].item() == 1.0
    snapshot = optimizer.state_dict()
    snapshot["state"][0] = saved  # ...and a rollback loads the older one: new tensor objects
    optimizer.load_state_dict(snapshot)
    assert optimizer.state[vectors]["exp_avg"] is not held["exp_avg"]
    runner._bind_state()
    for key, tensor in held.items():
        assert optimizer.state[vectors][key] is tensor  # the same objects again
        assert torch.equal(tensor, saved[key].to(tensor.dtype))  # holding the rolled-back values
