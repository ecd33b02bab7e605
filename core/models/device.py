"""Device and precision: CUDA trains in bf16 autocast where supported, else fp16 autocast with a GradScaler, with SDPA
attention; CPU trains in fp32."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from core.errors import TiwizError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Precision:
    device: object  # torch.device
    autocast_dtype: object  # torch.dtype or None (no autocast)
    use_grad_scaler: bool

    @property
    def name(self) -> str:
        if self.autocast_dtype is None:
            return "fp32"
        return "bf16" if "bfloat16" in str(self.autocast_dtype) else "fp16"

    def autocast(self):
        """A context manager: `torch.autocast` for mixed precision, else a no-op."""
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self):
        """A `torch.amp.GradScaler` for fp16, else None."""
        import torch

        return torch.amp.GradScaler(self.device.type) if self.use_grad_scaler else None


def pick_device(pref: str = "auto"):
    """`"auto"` → CUDA when available, else CPU. Also accepts `"cpu"`, `"cuda"`, `"cuda:N"`, `"mps"`."""
    import torch

    pref = (pref or "auto").strip().lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(pref)
    except (RuntimeError, ValueError) as exc:
        raise TiwizError(f"unknown device {pref!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TiwizError(f"device {pref!r} requested but CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TiwizError(f"device {pref!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise TiwizError("device 'mps' requested but Apple MPS is not available here")
    elif device.type != "cpu":
        raise TiwizError(f"unsupported device {pref!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def precision_for(device, pref: str = "auto") -> Precision:
    """CUDA: bf16 where `torch.cuda.is_bf16_supported()`, else fp16 + GradScaler. CPU/MPS: fp32. `pref` forces one
    of fp32/bf16/fp16 (fp16 and bf16 need CUDA)."""
    import torch

    device = torch.device(device)
    if pref not in PRECISIONS:
        raise TiwizError(f"precision must be one of {', '.join(PRECISIONS)}, not {pref!r}")
    if device.type != "cuda":
        if pref in ("bf16", "fp16"):
            raise TiwizError(f"{pref} mixed precision needs a CUDA GPU; on {device.type} tiwiz trains in fp32")
        return Precision(device, None, False)
    if pref == "fp32":
        return Precision(device, None, False)
    bf16_ok = torch.cuda.is_bf16_supported()
    if pref == "bf16" and not bf16_ok:
        raise TiwizError("this GPU does not support bf16; use fp16 or auto")
    if pref == "bf16" or (pref == "auto" and bf16_ok):
        return Precision(device, torch.bfloat16, False)
    return Precision(device, torch.float16, True)


def enable_sdpa(*modules) -> int:
    """Use PyTorch's scaled-dot-product attention (`AttnProcessor2_0`) in every diffusers module given. Returns how
    many modules were switched. Harmless on CPU."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    count = 0
    for module in modules:
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor2_0())
            count += 1
    return count


def prepare_for_device(model, device) -> Precision:
    """Move a `LoadedModel` to `device`, turn on SDPA on CUDA, and return the precision to train with."""
    import torch

    device = torch.device(device)
    for module in (model.text_encoder, model.unet, model.vae):
        module.to(device)
    model.device = device
    if device.type == "cuda":
        enable_sdpa(model.unet, model.vae)
    return precision_for(device)


def gpu_fields(device) -> dict:
    """GPU memory (bytes, whole device) and utilisation (%) for step events; {} off CUDA. Utilisation needs NVML
    (pynvml) and is left out without it."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return {}
    fields = {}
    try:
        free, total = torch.cuda.mem_get_info(device)
        fields.update(gpu_mem_used=total - free, gpu_mem_total=total)
    except RuntimeError:
        pass
    try:
        fields["gpu_util"] = torch.cuda.utilization(device)
    except Exception:  # no NVML: optional
        pass
    return fields
