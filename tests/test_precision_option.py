"""The precision choice (bf16 only on GPUs with native bf16, by compute capability), the `precision` config field and
`--precision` flag, and the torch floor that `torch.amp.GradScaler("cuda")` needs. All on CPU."""

import argparse
import re
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]
from pathlib import Path

import pytest

from core.errors import TiwizError
from core.models.device import choose_precision, has_native_bf16
from core.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("capability, native", [
    ((6, 1), False),  # Pascal (GTX 10xx, P100): torch.cuda.is_bf16_supported() says True (emulated)
    ((7, 0), False),  # V100
    ((7, 5), False),  # T4, RTX 20xx
    ((8, 0), True),   # A100
    ((8, 6), True),   # RTX 30xx, A10
    ((8, 9), True),   # L4, RTX 40xx
    ((9, 0), True),   # H100/H200
    ((12, 0), True),  # Blackwell consumer
    (None, False),
])
def test_native_bf16_is_decided_by_compute_capability(capability, native):
    assert has_native_bf16(capability) is native


def test_auto_picks_bf16_on_ampere_and_newer_else_fp16_and_fp32_off_cuda():
    assert choose_precision("cuda", "auto", (9, 0)) == "bf16"
    assert choose_precision("cuda", "auto", (8, 0)) == "bf16"
    assert choose_precision("cuda", "auto", (7, 5)) == "fp16"
    assert choose_precision("cuda", "auto", (6, 1)) == "fp16"
    assert choose_precision("cpu", "auto") == "fp32"
    assert choose_precision("mps", "auto") == "fp32"


def test_forced_precisions():
    assert choose_precision("cuda", "fp16", (9, 0)) == "fp16"  # forced even where bf16 is native
    assert choose_precision("cuda", "fp32", (9, 0)) == "fp32"
    assert choose_precision("cuda", "bf16", (8, 6)) == "bf16"
    assert choose_precision("cpu", "fp32") == "fp32"
    with pytest.raises(TiwizError, match=r"precision: this GPU \(compute capability 7\.5\) has no native bf16"):
        choose_precision("cuda", "bf16", (7, 5))
    with pytest.raises(TiwizError, match="precision: fp16 mixed precision needs a CUDA GPU"):
        choose_precision("cpu", "fp16")
    with pytest.raises(TiwizError, match="precision: bf16 mixed precision needs a CUDA GPU or a CPU with native"):
        choose_precision("mps", "bf16")
    with pytest.raises(TiwizError, match="precision: must be one of auto, fp32, bf16, fp16"):
        choose_precision("cuda", "float16", (9, 0))


def test_precision_config_field_validates_and_round_trips(tmp_path):
    assert TrainConfig().precision == "auto"
    config = TrainConfig.from_dict({"precision": "fp16", "device": "cuda"}, validate=False)
    config.validate(require_paths=False)
    path = config.to_toml(tmp_path / "c.toml")
    assert TrainConfig.from_toml(path, validate=False).precision == "fp16"
    with pytest.raises(TiwizError, match="precision: must be one of auto, fp32, bf16, fp16"):
        TrainConfig(precision="half").validate(require_paths=False)
    with pytest.raises(TiwizError, match="precision: fp16 mixed precision needs a CUDA GPU but device is cpu"):
        TrainConfig(precision="fp16", device="cpu").validate(require_paths=False)
    TrainConfig(precision="fp32", device="cpu").validate(require_paths=False)
    TrainConfig(precision="bf16", device="auto").validate(require_paths=False)  # decided when the GPU is known


def test_precision_flag(tmp_path):
    from core.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert "--precision" in parser.format_help()
    args = parser.parse_args(["--model", "m", "--data", "d", "--name", "n", "--precision", "bf16"])
    assert config_from_args(args).precision == "bf16"
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp8"])


def test_cpu_training_rejects_forced_mixed_precision_before_loading(tiny_model_dir, tmp_path, monkeypatch):
    """device auto on a CPU-only machine whose CPU lacks native bf16: the trainer refuses bf16 with a message naming
    the field (the CPU flags are replaced: this machine may have native bf16, see tests/test_cpu_bf16.py)."""
    import torch

    from core.events import ListSink
    from core.models import device
    from core.training.trainer import Trainer
    from train_helpers import make_images, tiny_config

    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only path")
    monkeypatch.setattr(device, "_CPU_FLAGS", [{"avx2", "fma"}])
    config = tiny_config(tiny_model_dir, make_images(tmp_path / "data", n=1), device="auto", precision="bf16")
    sink = ListSink()
    with pytest.raises(TiwizError, match="precision: bf16 on CPU needs native bf16.*avx512_bf16"):
        Trainer(config, tmp_path / "out", sink).run()
    assert "precision" in sink.of_type("error")[0]["message"]


def test_torch_floor_has_torch_amp_grad_scaler():
    """`torch.amp.GradScaler("cuda")` (used for fp16) exists from torch 2.3; an older floor would fail at fp16 time."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.match(r"torch>=(\d+)\.(\d+)", d) for d in deps if d.startswith("torch"))
    assert floor and (int(floor[1]), int(floor[2])) >= (2, 3)
