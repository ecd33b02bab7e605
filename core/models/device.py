"""Device and precision: CUDA trains in bf16 autocast where the GPU has native bf16 (compute capability 8.0 or newer:
Ampere, Ada, Hopper, ...), else fp16 autocast with a GradScaler, with SDPA attention; CPU trains in fp32. The precision
can be forced with `precision = "fp32" | "bf16" | "fp16"` (TrainConfig, `--precision`)."""

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
        """A `torch.amp.GradScaler` for fp16, else None (bf16 has fp32's exponent range and needs no scaling)."""
        import torch

        return torch.amp.GradScaler(self.device.type) if self.use_grad_scaler else None


BF16_MIN_CAPABILITY = (8, 0)


def has_native_bf16(capability: tuple[int, int] | None) -> bool:
    """Whether a CUDA GPU of this compute capability runs bf16 natively (8.0+). `torch.cuda.is_bf16_supported()` also
    says yes for older GPUs where bf16 is emulated, much slower than fp16, so tiwiz decides by the capability."""
    return capability is not None and tuple(capability[:2]) >= BF16_MIN_CAPABILITY


def choose_precision(device_type: str, pref: str = "auto", capability: tuple[int, int] | None = None) -> str:
    """The precision name ("fp32", "bf16" or "fp16") for a device type, a preference and (CUDA) the GPU's compute
    capability. Raises TiwizError naming `precision` when the preference cannot run there."""
    if pref not in PRECISIONS:
        raise TiwizError(f"precision: must be one of {', '.join(PRECISIONS)} (got {pref!r})")
    if device_type != "cuda":
        if pref in ("bf16", "fp16"):
            raise TiwizError(f"precision: {pref} mixed precision needs a CUDA GPU; on {device_type} tiwiz trains in "
                             "fp32 (use --precision auto or fp32)")
        return "fp32"
    if pref in ("fp32", "fp16"):
        return pref
    native = has_native_bf16(capability)
    if pref == "bf16" and not native:
        cap = ".".join(map(str, capability[:2])) if capability else "unknown"
        raise TiwizError(f"precision: this GPU (compute capability {cap}) has no native bf16 (needs 8.0 or newer); "
                         "use --precision fp16 or auto")
    return "bf16" if native else "fp16"


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
    """CUDA: bf16 on GPUs with native bf16 (compute capability 8.0+), else fp16 + GradScaler. CPU/MPS: fp32. `pref`
    forces one of fp32/bf16/fp16 (fp16 and bf16 need CUDA; bf16 needs native support)."""
    import torch

    device = torch.device(device)
    capability = None
    if device.type == "cuda" and pref not in ("fp32", "fp16"):
        capability = torch.cuda.get_device_capability(device)
    name = choose_precision(device.type, pref, capability)
    if name == "bf16":
        return Precision(device, torch.bfloat16, False)
    if name == "fp16":
        return Precision(device, torch.float16, True)
    return Precision(device, None, False)


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
