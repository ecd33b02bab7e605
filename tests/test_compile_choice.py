"""`compile auto|on|off`: the choice of how a training step runs (core.training.capture.choose_compile), the
refusals that name the field, the compile cache folder, and the events that report it (the one reducer, status.json,
the CLI's lines)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import FieldError
from core.runs import run_events as ev
from core.runs.run_state import RunState
from core.training import capture
from core.training.config import TrainConfig
from train_helpers import make_images

ROOT = Path(__file__).resolve().parent.parent


def _choose(pref="auto", device="cuda", precision="bf16", optimizer="adamw", steps_left=3000, **kw):
    return capture.choose_compile(pref, device_type=device, precision=precision, optimizer=optimizer,
                                  steps_left=steps_left, **kw)


def test_off_is_eager_everywhere():
    for device in ("cuda", "cpu", "mps"):
        choice = _choose("off", device=device)
        assert choice.mode == "eager" and "compile = off" in choice.reason


def test_auto_captures_a_long_cuda_run_and_leaves_a_short_one_eager():
    long = _choose(steps_left=3000)
    assert long.mode == capture.DEFAULT_IMPL == "cuda_graph"
    assert long.reason.startswith("auto: captured") and "not yet measured" in long.reason
    needed = capture.AUTO_FACTOR * capture.BREAK_EVEN_STEPS["cuda_graph"]
    assert _choose(steps_left=needed).mode == "cuda_graph"
    short = _choose(steps_left=needed - 1)
    assert short.mode == "eager" and f"{needed - 1} steps left" in short.reason
    # a measured break-even replaces the placeholder
    assert _choose(steps_left=50, break_even=20).mode == "cuda_graph"
    assert _choose(steps_left=2999, impl="compile").mode == "eager"  # inductor's compile needs a longer run
    assert _choose(steps_left=3000, impl="compile", break_even=300).mode == "compile"


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_is_eager_off_cuda_and_on_is_refused_naming_the_field(device):
    assert _choose("auto", device=device).mode == "eager"
    with pytest.raises(FieldError) as info:
        _choose("on", device=device)
    assert info.value.field == "compile"
    assert "compile: on" in str(info.value) and "CUDA GPU" in str(info.value)
    assert "compile auto or off" in str(info.value)


@pytest.mark.parametrize("precision,optimizer,words", [("fp16", "adamw", "gradient scaler"),
                                                       ("bf16", "prodigy", "optimizer prodigy"),
                                                       ("fp32", "adamw8bit", "optimizer adamw8bit")])
def test_what_cannot_be_captured_stays_eager_under_auto_and_is_refused_under_on(precision, optimizer, words):
    choice = _choose("auto", precision=precision, optimizer=optimizer)
    assert choice.mode == "eager" and words in choice.reason
    with pytest.raises(FieldError, match=words) as info:
        _choose("on", precision=precision, optimizer=optimizer)
    assert info.value.field == "compile" and "compile off" in str(info.value)


def test_on_captures_whatever_the_length():
    assert _choose("on", steps_left=1).mode == "cuda_graph"
    assert _choose("on", precision="fp32", steps_left=1).mode == "cuda_graph"


def test_the_config_and_the_preflight_refuse_on_for_a_cpu_before_any_worker():
    from core.training.preflight import device_problems

    base = dict(model="m", data="d", name="n", compile="on")
    with pytest.raises(FieldError) as info:
        TrainConfig.from_dict({**base, "device": "cpu"})
    assert info.value.field == "compile"
    config = TrainConfig.from_dict({**base, "device": "auto"})  # the device is not known yet: fine here
    found = device_problems(config, cuda=lambda: False)
    assert any(p.startswith("compile: on") for p in found), found
    assert not [p for p in device_problems(config, cuda=lambda: True) if p.startswith("compile")]
    assert TrainConfig.from_dict({**base, "device": "cpu", "compile": "auto"}).compile == "auto"
    with pytest.raises(FieldError, match="compile: must be one of auto, on, off"):
        TrainConfig.from_dict({**base, "compile": "yes"})


def test_tiwiz_train_refuses_compile_on_for_the_cpu(tmp_path, tiny_model_dir):
    data = make_images(tmp_path / "data", n=2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "core.cli", "train", "--model", str(tiny_model_dir), "--data",
                           str(data), "--name", "tcat", "--device", "cpu", "--compile", "on", "--steps", "2",
                           "--output", str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "compile: on" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "events.jsonl").exists()  # refused before a worker started


def test_the_compile_cache_is_shared_beside_the_runs(tmp_path, monkeypatch):
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    runs = tmp_path / "runs"
    first = capture.use_compile_cache(runs / "a-20260101-000000")
    assert first == runs / ".compile-cache" and first.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(first / "inductor")
    assert capture.compile_cache_dir(runs / "b-20260102-000000") == first  # the next run finds the same cache
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    capture.use_compile_cache(runs / "c")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")  # the user's own setting wins


def test_compile_and_memory_plan_events_fold_into_the_state_and_the_cli_lines():
    from core.cli.progress import describe_event

    events = [ev.Started(step=0, max_steps=10, name="n", device="cuda:0", precision="bf16"),
              ev.MemoryPlan(gradient_checkpointing=False, reason="auto: off: fits", need_gib=15.2, free_gib=70.1),
              ev.Compile(mode="cuda_graph", reason="auto: captured"),
              ev.Compile(step=0, mode="cuda_graph", seconds=2.25, shape="1x4x128x128", graphs=1),
              ev.Compile(step=40, mode="cuda_graph", seconds=1.5, shape="1x4x96x160", graphs=2)]
    lines = [ev.parse(e.to_line()) for e in events]  # through the JSON lines, as viewers read them
    state = RunState.fold(lines)
    assert (state.compile_mode, state.compile_reason, state.gradient_checkpointing) == \
        ("cuda_graph", "auto: captured", False)
    assert state.compile_seconds == pytest.approx(3.75)
    assert state.speed_label == "CUDA graphs (captured in 3.8 s) · checkpointing off"
    state.apply(ev.Compile(mode="eager", reason="capturing failed: ..."))  # a choice resets this life's figures
    assert state.compile_mode == "eager" and state.compile_seconds == 0.0
    assert RunState.fold([ev.Started(device="cpu"), ev.Compile(mode="eager", reason="auto: eager on cpu")]
                         ).speed_label == ""  # nothing to say on a CPU
    assert describe_event(events[1]) == "gradient checkpointing off: auto: off: fits"
    assert describe_event(events[2]) == "training step: cuda_graph (auto: captured)"
    assert "1x4x128x128 in 2.2 s" in describe_event(events[3])


def test_the_worker_writes_the_mode_into_status_json(tmp_path):
    from core.runs import folder as runs
    from core.runs.worker import StatusTracker

    tracker = StatusTracker(tmp_path, resume=False)
    try:
        tracker.on_event(ev.Compile(mode="cuda_graph", reason="auto: captured"))
        tracker.on_event(ev.MemoryPlan(gradient_checkpointing=True, reason="auto: on"))
        tracker.flush()
    finally:
        tracker.close()
    status = runs.read_status(tmp_path)
    assert status["compile"] == "cuda_graph" and status["gradient_checkpointing"] is True
