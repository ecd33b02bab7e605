"""Captured training steps on a GPU (core.training.capture, core.training.step_plan) on the tiny model: a captured step
agrees with eager, torch.compile captures too, one graph per bucket shape, kill -9 then resume of a captured run,
a capture that fails falls back to eager, checkpointing auto reads the free memory, and a real out-of-memory step.

Run on a GPU by bench/gpu_check.py (`pytest -m cuda`); skipped elsewhere (tests/conftest.py). The figures (capture
seconds, step times, differences) are recorded as test properties for the report; nothing here is a timed assertion.

The stated tolerance: a captured run's final vectors equal the eager run's (and a resumed captured run's the
uninterrupted captured run's) to within 2% of the largest distance any vector element moved. The captured update is
AdamW with capturable=True (device-side step count and bias corrections, the learning rate in a tensor) and the clip
limit in a tensor, whose rounding differs from the eager optimizer's in the last bits; CUDA's attention backward is
not bitwise deterministic either (tests/test_cuda_training.py uses the same tolerance for eager resume)."""

import os
import signal
import statistics
import time
from pathlib import Path

import pytest
import torch

from core.errors import TiwizError
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, tiny_config

pytestmark = pytest.mark.cuda
TOLERANCE = 0.02  # of the largest movement of a vector element (see the module's doc)
SAFETY_S = 240  # a guard against hanging, not a timing assertion


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("cuda-capture-data") / "data", n=3)


def _train(model_dir, data, out, impl=None, **changes):
    sink = ListSink()
    trainer = Trainer(tiny_config(model_dir, data, device="cuda", **changes), out, sink)
    trainer.capture_impl = impl
    outcome = trainer.run()
    return trainer, sink, outcome


def _step_times(sink) -> float:
    times = [b["elapsed"] - a["elapsed"] for a, b in zip(sink.of_type("step")[2:], sink.of_type("step")[3:])]
    return statistics.median(times) if times else float("nan")


def _captures(sink) -> list:
    """The `compile` events of captured input shapes (not the choice, not the update's)."""
    return [e for e in sink.of_type("compile") if e.get("seconds") is not None and e.get("shape") != "update"]


def _compare(a, b, first, record_property, name):
    """Max difference between two runs' vectors, against how far the vectors moved from `first`."""
    moved = (a - first).abs().max().item()
    error = (a - b).abs().max().item()
    record_property(f"{name}_max_abs_diff", error)
    record_property(f"{name}_max_movement", moved)
    assert moved > 1e-3, "the vectors barely moved: the comparison would mean nothing"
    assert error <= TOLERANCE * moved, (error, moved)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_captured_step_agrees_with_eager(precision, tiny_model_dir, data_dir, tmp_path, record_property):
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("no native bf16 on this GPU")
    options = dict(steps=30, lr="0.01", precision=precision, clip_grad="norm", clip_grad_value="1.0", save_every=5)
    eager, eager_sink, _ = _train(tiny_model_dir, data_dir, tmp_path / "eager", compile="off", **options)
    captured, sink, outcome = _train(tiny_model_dir, data_dir, tmp_path / "captured", compile="on", **options)
    assert outcome.finished and outcome.step == 30
    plan = sink.of_type("compile")
    assert plan[0]["mode"] == "cuda_graph" and plan[0]["reason"] == "on (compile = on)"
    captures = _captures(sink)
    assert len(captures) == 1 and captures[0]["graphs"] == 1 and captures[0]["shape"] == "1x4x8x8"
    update = [e for e in plan if e.get("shape") == "update"]
    assert len(update) == 1 and update[0]["seconds"] >= 0  # the update is captured once, at the first step
    record_property("capture_s", captures[0]["seconds"] + update[0]["seconds"])
    record_property("eager_s_per_step", _step_times(eager_sink))
    record_property("captured_s_per_step", _step_times(sink))
    first_eager, first_captured = eager_sink.of_type("step")[0]["loss"], sink.of_type("step")[0]["loss"]
    assert abs(first_captured - first_eager) <= 1e-2 * abs(first_eager)  # the same inputs, the same weights
    first = _load(tmp_path / "eager" / "embeddings" / "tcat-5.safetensors")
    _compare(_load(tmp_path / "captured" / "tcat.safetensors"), _load(tmp_path / "eager" / "tcat.safetensors"),
             first, record_property, "captured_vs_eager")


def test_torch_compile_captures_the_step_too(tiny_model_dir, data_dir, tmp_path, record_property):
    options = dict(steps=12, lr="0.01", save_every=4)
    _train(tiny_model_dir, data_dir, tmp_path / "eager", compile="off", **options)
    trainer, sink, outcome = _train(tiny_model_dir, data_dir, tmp_path / "compiled", impl="compile", **options)
    assert outcome.finished
    plan = sink.of_type("compile")
    assert {e["mode"] for e in plan} == {"compile"}, (plan, sink.of_type("warning"))
    assert len(_captures(sink)) == 1 and [e["shape"] for e in plan if e.get("shape") == "update"] == ["update"]
    record_property("compile_s", sum(e.get("seconds") or 0 for e in plan))
    assert (tmp_path / ".compile-cache" / "inductor").is_dir()  # shared by the runs beside this one
    first = _load(tmp_path / "eager" / "embeddings" / "tcat-4.safetensors")
    _compare(_load(tmp_path / "compiled" / "tcat.safetensors"), _load(tmp_path / "eager" / "tcat.safetensors"),
             first, record_property, "compiled_vs_eager")


def test_one_graph_per_bucket_shape(tiny_model_dir, tmp_path):
    from PIL import Image

    data = make_images(tmp_path / "data", n=2, size=(128, 128))
    for i in range(2):
        Image.new("RGB", (256, 128), (40 * i, 90, 200)).save(data / f"wide-{i}.png")
        (data / f"wide-{i}.txt").write_text("a wide thing")
    trainer, sink, outcome = _train(tiny_model_dir, data, tmp_path / "run", compile="on", steps=12, width=128,
                                    height=128, buckets=True, bucket_min_side=64, bucket_max_side=256)
    assert outcome.finished
    shapes = {item.size for item in trainer.session.dataset.items}
    assert len(shapes) == 2, shapes
    captures = _captures(sink)
    assert len(captures) == 2 and [e["graphs"] for e in captures] == [1, 2]
    assert len({e["shape"] for e in captures}) == 2


def test_a_capture_that_fails_falls_back_to_eager(tiny_model_dir, data_dir, tmp_path):
    """A UNet that reads a value back to the host in its forward cannot be captured: the run says so and trains
    eagerly."""
    sink = ListSink()
    trainer = Trainer(tiny_config(tiny_model_dir, data_dir, device="cuda", compile="on", steps=4), tmp_path / "run",
                      sink)
    hooked = []

    def poll():
        if not hooked:
            hooked.append(trainer.session.model.unet.register_forward_pre_hook(
                lambda module, args: float(args[0].float().mean())))  # a host sync: not allowed while capturing
        return []

    trainer.poll_commands = poll
    outcome = trainer.run()
    assert outcome.finished and outcome.step == 4
    modes = [e["mode"] for e in sink.of_type("compile")]
    assert modes == ["cuda_graph", "eager"], modes
    assert any("capturing the step failed" in w["message"] for w in sink.of_type("warning"))


def test_checkpointing_auto_reads_the_free_memory(tiny_model_dir, data_dir, tmp_path):
    trainer, sink, _ = _train(tiny_model_dir, data_dir, tmp_path / "run", steps=2)
    plan = sink.of_type("memory_plan")[0]
    free = torch.cuda.mem_get_info()[1] / 2**30
    assert plan["gradient_checkpointing"] is False and 0 < plan["free_gib"] <= free
    assert plan["need_gib"] is not None and plan["reason"].startswith("auto: off")
    assert not trainer.session.model.unet.is_gradient_checkpointing


def _fill_gpu(leave: int) -> list:
    """Tensors taking the GPU's free memory but `leave` bytes (after handing the cache back)."""
    torch.cuda.empty_cache()
    ballast, chunk = [], 2**30
    while chunk >= 2**20:
        free = torch.cuda.mem_get_info()[0]
        if free - chunk < leave:
            chunk //= 2
            continue
        try:
            ballast.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            chunk //= 2
    return ballast


def test_a_real_out_of_memory_step_is_retried_with_checkpointing_then_saved_and_explained(tiny_model_dir, data_dir,
                                                                                            tmp_path, record_property):
    """From step 4 the GPU holds a quarter of what a step needs (measured over steps 2-3), with room for a save: the
    step runs out of memory, auto turns checkpointing on and runs it again, runs out again, and the run saves step 3
    and says what to change. Freed, the run resumes to its end."""
    sink = ListSink()
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir, data_dir, device="cuda", compile="off", steps=6, save_every=2, width=1024,
                         height=1024)
    trainer = Trainer(config, out, sink)
    ballast, need = [], []

    def poll():
        step = trainer.session.step
        if step == 1:
            torch.cuda.reset_peak_memory_stats()
        elif step == 3 and not ballast:
            need.append(torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated())
            if need[0] < 120 * 2**20:
                pytest.skip(f"the tiny model's step needs only {need[0] / 2**20:.0f} MiB here")
            ballast.extend(_fill_gpu(leave=max(24 * 2**20, need[0] // 4)))
        return []

    trainer.poll_commands = poll
    with pytest.raises(TiwizError) as info:
        trainer.run()
    ballast.clear()
    torch.cuda.empty_cache()
    record_property("step_need_mib", round(need[0] / 2**20, 1))
    plans = sink.of_type("memory_plan")
    assert [p["gradient_checkpointing"] for p in plans] == [False, True], (plans, str(info.value))
    message = str(info.value)
    assert "out of GPU memory at step 4" in message and "state of step 3 is saved" in message, message
    assert torch.load(out / "state" / "latest.pt", weights_only=True)["step"] == 3
    outcome = Trainer(config, out, ListSink()).run(resume=True)
    assert outcome.finished and outcome.step == 6


# ---- kill -9 and resume of a captured run ------------------------------------------------------------------------
def _load(path: Path):
    from safetensors.torch import load_file

    return next(iter(load_file(str(path)).values())).float()


def _wait(predicate, what: str):
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_kill9_then_resume_of_a_captured_run_gives_the_same_vectors(tiny_model_dir, data_dir, tmp_path,
                                                                    record_property):
    from core.runs import api as runapi
    from core.runs import folder as runs

    settings = dict(device="cuda", compile="on", steps=200, save_every=20, validate_every=0, lr="0.005", seed=11)
    run = runapi.start_run(tiny_config(tiny_model_dir, data_dir, output=str(tmp_path / "killed"), **settings))
    follower = runapi.follow(run)

    def reached():
        for event in follower.poll():
            if event["type"] == "step" and event["step"] >= 30:
                return True
        if follower.done():
            raise AssertionError("the run ended before step 30")
        return False

    _wait(reached, "step 30")
    os.kill(runs.read_status(run)["pid"], signal.SIGKILL)
    killed = _wait(lambda: (lambda i: i if not i.alive else None)(runs.inspect_run(run)), "the killed worker")
    assert killed.state == "killed" and killed.last_checkpoint >= 20, killed

    reference = tmp_path / "ref"
    Trainer(tiny_config(tiny_model_dir, data_dir, output=str(reference), **settings), reference, ListSink()).run()
    runapi.resume_run(run)
    info = _wait(lambda: (lambda i: i if not i.alive else None)(runs.inspect_run(run)), "the resumed worker")
    assert info.state == "finished" and info.step == 200, (run / runs.LOG).read_text()[-3000:]
    assert runs.read_status(run).get("compile") == "cuda_graph"
    _compare(_load(run / "tcat.safetensors"), _load(reference / "tcat.safetensors"),
             _load(reference / "embeddings" / "tcat-20.safetensors"), record_property, "captured_resume")
