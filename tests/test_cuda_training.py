"""The CUDA paths of training, on the tiny model (64 px): bf16 autocast, fp16 with a GradScaler (forced even where bf16
is native), SDPA attention, a preview render, the GPU fields of step events, and kill -9 + resume on CUDA.

Run on a GPU by `bench/gpu_check.py` (`pytest -m cuda`); skipped elsewhere (tests/conftest.py)."""

import os
import signal
import time
from pathlib import Path

import pytest
import torch

import core.models.loader as loader
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, tiny_config

pytestmark = pytest.mark.cuda
SAFETY_S = 180  # a guard against hanging, not a timing assertion


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("cuda-data") / "data", n=3)


def _started_precision(sink) -> str:
    started = sink.of_type("started")[0]
    return started.get("precision") or started.get("dtype")  # "dtype" before the typed run events


def _native_bf16() -> bool:
    return torch.cuda.get_device_capability() >= (8, 0)


def _unet_output_dtypes(trainer_holder: dict):
    """Forward hooks recording the dtype of the UNet's first linear layer's output (what autocast computes in)."""
    seen = []

    def attach(model):
        linear = next(m for m in model.unet.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))

    return seen, attach


def _train(config, out, after_load=None):
    """The real Trainer; `after_load(model)` runs once the model is loaded (to attach hooks for the assertions)."""
    sink = ListSink()
    trainer = Trainer(config, out, sink)
    original = loader.load_model

    def load_and_hook(*args, **kwargs):
        model = original(*args, **kwargs)
        if after_load:
            after_load(model)
        return model

    loader.load_model = load_and_hook
    try:
        summary = trainer.run()
    finally:
        loader.load_model = original
    return trainer, sink, summary


def test_bf16_autocast_training(tiny_model_dir, data_dir, tmp_path):
    if not _native_bf16():
        pytest.skip(f"GPU compute capability {torch.cuda.get_device_capability()} has no native bf16")
    seen, attach = _unet_output_dtypes({})
    config = tiny_config(tiny_model_dir, data_dir, device="cuda", precision="auto", steps=4, lr="0.02")
    trainer, sink, summary = _train(config, tmp_path / "out", attach)
    assert summary.finished and summary.step == 4
    assert _started_precision(sink) == "bf16" and trainer.session.precision.name == "bf16"
    assert not trainer.session.scaler.is_enabled()  # bf16 has fp32's exponent range: no loss scaling
    assert seen and set(seen) == {torch.bfloat16}
    vectors = trainer.session.vectors
    assert vectors.device.type == "cuda" and vectors.dtype == torch.float32  # fp32 master copy
    # frozen weights in bf16 for every family (half the memory, no per-forward weight casts)
    assert {p.dtype for p in trainer.session.model.unet.parameters()} == {torch.bfloat16}
    assert next(trainer.session.model.text_encoder.parameters()).dtype == torch.bfloat16
    losses = [e["loss"] for e in sink.of_type("step")]
    assert len(losses) == 4 and all(map(torch.isfinite, torch.tensor(losses)))
    assert not [w for w in sink.of_type("warning") if "NaN" in w["message"]], sink.of_type("warning")
    assert (tmp_path / "out" / "tcat.safetensors").is_file()


def test_fp16_with_grad_scaler_forced_even_where_bf16_is_native(tiny_model_dir, data_dir, tmp_path):
    seen, attach = _unet_output_dtypes({})
    config = tiny_config(tiny_model_dir, data_dir, device="cuda", precision="fp16", steps=6, save_every=3,
                         lr="0.02")
    out = tmp_path / "out"
    trainer, sink, summary = _train(config, out, attach)
    assert summary.finished and summary.step == 6
    assert _started_precision(sink) == "fp16"
    assert trainer.session.scaler.is_enabled()
    assert next(trainer.session.model.unet.parameters()).dtype == torch.float32  # fp16 autocast keeps fp32 weights
    assert seen and set(seen) == {torch.float16}
    state = torch.load(out / "state" / "latest.pt", weights_only=True)
    assert state["scaler"] and state["scaler"]["scale"] > 0  # the scaler ran and is saved for resume
    from safetensors.torch import load_file

    first = next(iter(load_file(str(out / "embeddings" / "tcat-3.safetensors")).values()))
    last = next(iter(load_file(str(out / "tcat.safetensors")).values()))
    assert torch.isfinite(last).all() and not torch.equal(first, last)  # steps were applied, not all skipped


def test_sdpa_is_used_in_the_unet(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import torch.nn.functional as F
    from diffusers.models.attention_processor import AttnProcessor2_0

    calls = []
    in_unet = [False]
    original = F.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        if in_unet[0]:
            calls.append((query.device.type, query.dtype))
        return original(query, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def attach(model):
        unet = model.unet
        unet.register_forward_pre_hook(lambda *a: in_unet.__setitem__(0, True))
        unet.register_forward_hook(lambda *a: in_unet.__setitem__(0, False))

    config = tiny_config(tiny_model_dir, data_dir, device="cuda", steps=1)
    trainer, sink, summary = _train(config, tmp_path / "out", attach)
    processors = trainer.session.model.unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    assert calls, "the UNet never called torch.nn.functional.scaled_dot_product_attention"
    half = torch.bfloat16 if _native_bf16() else torch.float16
    assert set(calls) == {("cuda", half)}  # half precision on the GPU: the flash / memory-efficient kernels apply


def test_preview_render_on_cuda(tiny_model_dir, data_dir, tmp_path):
    from PIL import Image
    import numpy as np

    config = tiny_config(tiny_model_dir, data_dir, device="cuda", steps=2, preview_every=2, preview_steps=3)
    trainer, sink, summary = _train(config, tmp_path / "out")
    failed = [w for w in sink.of_type("warning") if "preview" in w["message"]]  # a failed preview is a warning
    assert not failed, failed
    previews = sink.of_type("preview")
    assert [e["step"] for e in previews] == [0, 2]  # step 0: the init vectors, before the first step
    with Image.open(tmp_path / "out" / previews[-1]["path"]) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0  # NaN latents decode to a flat black image


def test_step_events_carry_gpu_fields(tiny_model_dir, data_dir, tmp_path):
    config = tiny_config(tiny_model_dir, data_dir, device="cuda", steps=2)
    trainer, sink, summary = _train(config, tmp_path / "out")
    steps = sink.of_type("step")
    with_gpu = [e for e in steps if "gpu_mem_used" in e]
    assert with_gpu and with_gpu[0] is steps[0]  # polled on the first step, then at most every 2 s
    e = with_gpu[0]
    assert 0 < e["gpu_mem_used"] <= e["gpu_mem_total"]
    assert e["gpu_mem_total"] > 2**30
    if "gpu_util" in e:  # needs NVML (pynvml)
        assert 0 <= e["gpu_util"] <= 100


# ---- kill -9 and resume on CUDA ------------------------------------------------------------------------------------
# CUDA kernels (flash / memory-efficient attention backward, atomics) are not bitwise deterministic, so two CUDA runs of
# the same config differ slightly. The stated tolerance: the resumed run's final vectors equal the uninterrupted run's
# to within 2% of the largest distance any vector element moved after the first checkpoint (the CPU test
# tests/test_runs_worker.py asserts 1e-5 absolute). The measured figures are recorded as test properties.
RESUME_TOLERANCE = 0.02


def _load_vectors(path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return next(iter(tensors.values())).float()


def _wait(predicate, what: str):
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_kill9_then_resume_on_cuda_gives_the_same_vectors(tiny_model_dir, data_dir, tmp_path, record_property):
    from core.runs import api as runapi
    from core.runs import folder as runs

    settings = dict(device="cuda", steps=200, save_every=20, validate_every=0, lr="0.005", seed=11)
    run = runapi.start_run(tiny_config(tiny_model_dir, data_dir, output=str(tmp_path / "killed"), **settings))
    follower = runapi.follow(run)
    seen = []

    def reached():
        for event in follower.poll():
            seen.append(event)
            if event["type"] == "step" and event["step"] >= 30:
                return True
        if follower.done():
            raise AssertionError(f"run ended before step 30: {seen[-3:]}")
        return False

    _wait(reached, "step 30")
    os.kill(runs.read_status(run)["pid"], signal.SIGKILL)
    killed = _wait(lambda: (lambda i: i if not i.alive else None)(runs.inspect_run(run)), "the killed worker")
    assert killed.state == "killed" and killed.last_checkpoint >= 20 and killed.step < 200, killed

    reference = tmp_path / "ref"
    Trainer(tiny_config(tiny_model_dir, data_dir, output=str(reference), **settings), reference, ListSink()).run()

    runapi.resume_run(run)
    info = _wait(lambda: (lambda i: i if not i.alive else None)(runs.inspect_run(run)), "the resumed worker")
    assert info.state == "finished" and info.step == 200, (run / runs.LOG).read_text()[-3000:]
    resumed, expected = _load_vectors(run / "tcat.safetensors"), _load_vectors(reference / "tcat.safetensors")
    moved = (expected - _load_vectors(reference / "embeddings" / "tcat-20.safetensors")).abs().max().item()
    error = (resumed - expected).abs().max().item()
    record_property("resume_max_abs_diff", error)
    record_property("resume_max_movement", moved)
    assert moved > 1e-3, "the vectors barely moved: the comparison would mean nothing"
    assert error <= RESUME_TOLERANCE * moved, (error, moved)
