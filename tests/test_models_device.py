"""Device and precision choice, and SDPA attention."""

import pytest
import torch

from core.errors import TiwizError
from core.models.device import enable_sdpa, pick_device, precision_for


def test_cpu_device_trains_in_fp32():
    device = pick_device("cpu")
    assert device == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
    p = precision_for(device)
    assert (p.autocast_dtype, p.use_grad_scaler, p.name) == (None, False, "fp32")
    assert p.grad_scaler() is None
    with p.autocast():
        assert torch.ones(2).dtype == torch.float32
    with pytest.raises(TiwizError, match="precision: fp16 mixed precision needs a CUDA GPU"):
        precision_for(device, "fp16")


def test_cpu_bf16_follows_the_cpu_flags(monkeypatch):
    """bf16 autocast on CPU only where the CPU has native bf16 (tests/test_cpu_bf16.py has the rest)."""
    from core.models import device as device_module

    monkeypatch.setattr(device_module, "_CPU_FLAGS", [{"avx2", "avx512f"}])
    with pytest.raises(TiwizError, match="precision: bf16 on CPU needs native bf16.*avx512_bf16"):
        precision_for(torch.device("cpu"), "bf16")
    monkeypatch.setattr(device_module, "_CPU_FLAGS", [{"avx2", "avx512f", "avx512_bf16"}])
    assert precision_for(torch.device("cpu"), "bf16").autocast_dtype == torch.bfloat16


def test_bad_or_missing_devices_are_clear_errors():
    with pytest.raises(TiwizError, match="unknown device"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(TiwizError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(TiwizError, match="precision: must be one of"):
        precision_for(torch.device("cpu"), "fp8")


@pytest.mark.cuda
def test_cuda_uses_bf16_where_supported_else_fp16_with_scaler():
    p = precision_for(pick_device("cuda"))
    if torch.cuda.get_device_capability() >= (8, 0):
        assert (p.autocast_dtype, p.use_grad_scaler, p.name) == (torch.bfloat16, False, "bf16")
    else:
        assert (p.autocast_dtype, p.use_grad_scaler, p.name) == (torch.float16, True, "fp16")
        assert p.grad_scaler() is not None
    forced = precision_for(pick_device("cuda"), "fp16")
    assert forced.use_grad_scaler and forced.autocast_dtype == torch.float16


def test_enable_sdpa_switches_every_attention_processor(tiny_model_dir):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir / "unet", local_files_only=True)
    unet.set_attn_processor(AttnProcessor())
    assert enable_sdpa(unet, None) == 1
    assert unet.attn_processors and all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
