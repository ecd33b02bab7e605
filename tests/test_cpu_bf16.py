"""bf16 autocast on CPUs with native bf16 (avx512_bf16 / amx_bf16): the flag check, the config / preflight refusal
naming `precision` elsewhere, and real tiny-model training runs under `torch.autocast("cpu", dtype=torch.bfloat16)`.

Where a test must see a CPU without native bf16 on a machine that has it (or the reverse), it replaces the flags
read from /proc/cpuinfo (`device._CPU_FLAGS`, the hardware probe), never the check or the trainer."""

import math

import pytest
import torch

from core.errors import FieldError, TiwizError
from core.events import ListSink
from core.models import device
from core.models.device import (auto_device_precision_problem, choose_precision, cpu_bf16_problem, cpu_flags,
                                cpu_has_native_bf16, parse_cpu_flags)
from core.training import preflight
from core.training.config import TrainConfig
from core.training.trainer import Trainer
from train_helpers import (make_images, one_thread, planted_validation_losses, render_concept_images,  # noqa: F401
                           text_sensitive_copy, tiny_config)

NATIVE = bool(cpu_flags()) and cpu_has_native_bf16(cpu_flags())
needs_native = pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag)")

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8"
COOPER_LAKE = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
ZEN4 = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni"
ICE_LAKE = "fpu sse2 avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_vbmi2"  # AVX-512, bf16 emulated
HASWELL = "fpu sse2 avx avx2 fma"


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(device, "_CPU_FLAGS", [set(HASWELL.split())])


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(device, "_CPU_FLAGS", [set(COOPER_LAKE.split())])


@pytest.mark.parametrize("flags, native", [
    (SAPPHIRE_RAPIDS, True), (COOPER_LAKE, True), (ZEN4, True), ("amx_bf16 amx_tile", True),
    (ICE_LAKE, False), (HASWELL, False), ("", False), (set(COOPER_LAKE.split()), True), (None, False),
    ("avx512_bf16x", False),  # whole flag names only
])
def test_native_bf16_is_read_from_the_cpu_flags(flags, native):
    assert cpu_has_native_bf16(flags) is native


def test_cpuinfo_flags_are_parsed_from_the_first_processor():
    text = (f"processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: {COOPER_LAKE}\n"
            "bugs\t\t: spectre_v1\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert parse_cpu_flags(text) == set(COOPER_LAKE.split())
    assert parse_cpu_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == set()  # no x86 flags line
    assert isinstance(cpu_flags(), (set, type(None)))  # this machine's, read for real


def test_the_refusal_names_precision_and_the_missing_flag():
    assert cpu_bf16_problem(COOPER_LAKE) is None
    message = cpu_bf16_problem(ICE_LAKE)
    assert message.startswith("precision: bf16 on CPU needs native bf16")
    assert "avx512_bf16" in message and "amx_bf16" in message and "fp32" in message


def test_no_cpuinfo_is_a_clear_refusal(monkeypatch):
    monkeypatch.setattr(device, "_CPU_FLAGS", [None])  # macOS / Windows: no /proc/cpuinfo
    assert "does not say (no /proc/cpuinfo)" in cpu_bf16_problem()


def test_choose_precision_on_cpu():
    assert choose_precision("cpu", "bf16", flags=COOPER_LAKE) == "bf16"
    assert choose_precision("cpu", "auto", flags=COOPER_LAKE) == "fp32"  # measured slower on CPU: opt-in only
    assert choose_precision("cpu", "fp32", flags=COOPER_LAKE) == "fp32"
    with pytest.raises(TiwizError, match="precision: bf16 on CPU needs native bf16.*avx512_bf16"):
        choose_precision("cpu", "bf16", flags=HASWELL)
    with pytest.raises(TiwizError, match="precision: fp16 mixed precision needs a CUDA GPU but device is cpu"):
        choose_precision("cpu", "fp16", flags=SAPPHIRE_RAPIDS)  # fp16 stays CUDA-only
    with pytest.raises(TiwizError, match="precision: bf16 mixed precision needs a CUDA GPU or a CPU with native"):
        choose_precision("mps", "bf16", flags=SAPPHIRE_RAPIDS)


def test_precision_for_builds_a_cpu_bf16_autocast(cpu_with_bf16):
    p = device.precision_for(torch.device("cpu"), "bf16")
    assert (p.name, p.autocast_dtype, p.use_grad_scaler, p.grad_scaler()) == ("bf16", torch.bfloat16, False, None)
    with p.autocast():
        assert (torch.ones(2, 3) @ torch.ones(3, 2)).dtype == torch.bfloat16
    assert device.precision_for(torch.device("cpu")).name == "fp32"


def test_config_accepts_bf16_on_a_cpu_with_native_bf16(cpu_with_bf16):
    TrainConfig(precision="bf16", device="cpu").validate(require_paths=False)


def test_config_refuses_bf16_on_a_cpu_without_native_bf16(cpu_without_bf16):
    with pytest.raises(FieldError, match="precision: bf16 on CPU needs native bf16.*avx512_bf16") as caught:
        TrainConfig(precision="bf16", device="cpu").validate(require_paths=False)
    assert caught.value.field == "precision"
    with pytest.raises(FieldError, match="precision: fp16 mixed precision needs a CUDA GPU") as caught:
        TrainConfig(precision="fp16", device="cpu").validate(require_paths=False)
    assert caught.value.field == "precision"
    TrainConfig(precision="bf16", device="auto").validate(require_paths=False)  # the device is not known yet


def test_config_on_this_machine_follows_its_real_flags():
    config = TrainConfig(precision="bf16", device="cpu")
    if NATIVE:
        config.validate(require_paths=False)
    else:
        with pytest.raises(FieldError, match="precision: bf16 on CPU"):
            config.validate(require_paths=False)


def test_cli_flag_error_names_the_flag(cpu_without_bf16):
    import argparse

    from core.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d", "--name", "n", "--device", "cpu", "--precision", "bf16"])
    with pytest.raises(FieldError, match=r"^--precision: bf16 on CPU needs native bf16.*avx512_bf16"):
        config_from_args(args)


def test_preflight_refuses_device_auto_bf16_on_a_cpu_only_machine_without_native_bf16(cpu_without_bf16, tmp_path):
    config = TrainConfig.from_dict(dict(model="m", data=str(make_images(tmp_path / "d", n=1)), name="zxqthing",
                                        device="auto", precision="bf16"))
    found = preflight.problems(config, cuda=lambda: False)
    assert [p for p in found if p.startswith("precision: bf16 on CPU needs native bf16")], found
    assert not preflight.problems(config, cuda=lambda: True)  # a GPU: the trainer judges it by its capability
    assert not preflight.problems(config, cuda=lambda: None)  # unknown (the TUI's first pass): the trainer decides
    with pytest.raises(TiwizError, match="precision: fp16 mixed precision needs a CUDA GPU"):
        preflight.check(config.replace(precision="fp16"), cli=True, cuda=lambda: False)
    assert auto_device_precision_problem("auto", "fp32", lambda: False) is None


def test_preflight_accepts_device_auto_bf16_on_a_cpu_with_native_bf16(cpu_with_bf16):
    assert auto_device_precision_problem("auto", "bf16", lambda: False) is None


@pytest.fixture
def unet_output_dtypes():
    """The dtype of every UNet forward's output and of its weights, seen by a global forward hook."""
    from diffusers import UNet2DConditionModel

    seen = []

    def hook(module, args, output):
        if isinstance(module, UNet2DConditionModel):
            seen.append((output.sample.dtype, next(module.parameters()).dtype))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield seen
    handle.remove()


@needs_native
def test_bf16_training_run_on_cpu(one_thread, tiny_model_dir, tmp_path, unet_output_dtypes):
    from safetensors.torch import load_file

    data = make_images(tmp_path / "data", n=2)
    config = tiny_config(tiny_model_dir, data, vectors=2, steps=4, save_every=2, init_text="red cat",
                         precision="bf16")
    sink = ListSink()
    summary = Trainer(config, tmp_path / "out", sink).run()
    assert summary.finished
    started = sink.of_type("started")[0]
    assert (started["device"], started["precision"]) == ("cpu", "bf16")
    losses = [e["loss"] for e in sink.of_type("step")]
    assert len(losses) == 4 and all(math.isfinite(x) and x > 0 for x in losses)
    # the UNet really ran under bf16 autocast, on fp32 frozen weights
    assert unet_output_dtypes and set(unet_output_dtypes) == {(torch.bfloat16, torch.float32)}
    at_2 = load_file(tmp_path / "out" / "embeddings" / "tcat-2.safetensors")
    final = load_file(tmp_path / "out" / "tcat.safetensors")
    (key,) = final
    assert final[key].dtype == at_2[key].dtype == torch.float32 and final[key].shape == (2, 32)
    assert not torch.equal(final[key], at_2[key])  # the vectors moved between step 2 and step 4


def test_fp32_default_on_cpu_runs_without_autocast(one_thread, tiny_model_dir, tmp_path, unet_output_dtypes):
    sink = ListSink()
    Trainer(tiny_config(tiny_model_dir, make_images(tmp_path / "data", n=1), steps=1), tmp_path / "out", sink).run()
    assert sink.of_type("started")[0]["precision"] == "fp32"
    assert sink.of_type("started")[0]["family"] == "sd1"
    assert unet_output_dtypes and set(unet_output_dtypes) == {(torch.float32, torch.float32)}


@needs_native
def test_bf16_learns_a_planted_concept_like_fp32(one_thread, tiny_model_dir, tmp_path):
    """The planted-concept run of test_train_learns, in fp32 and in bf16 with the same seed: bf16 must lower the
    fixed-seed validation loss too, by a comparable amount."""
    from diffusers import StableDiffusionPipeline

    model = text_sensitive_copy(tiny_model_dir, tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(model, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion({"<hidden>": torch.randn(2, 32, generator=torch.Generator().manual_seed(123)) * 1.5})
    data = render_concept_images(pipe, tmp_path / "data")
    del pipe
    drops = {}
    for precision in ("fp32", "bf16"):
        vals = list(planted_validation_losses(model, data, tmp_path / f"out-{precision}", validate_every=8,
                                              precision=precision).values())
        print(precision, "validation loss at steps 0, 8, 16:", [round(v, 5) for v in vals])
        assert len(vals) == 3 and vals[-1] < 0.98 * vals[0], (precision, vals)
        drops[precision] = 1 - vals[-1] / vals[0]
    print(f"validation-loss drop over 16 steps: {drops}")  # pytest -rP shows it (bench/RESULTS.md quotes it)
    assert drops["bf16"] > 0.5 * drops["fp32"], drops
