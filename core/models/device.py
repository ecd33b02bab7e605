"""Device and precision: CUDA trains in bf16 autocast where the GPU has native bf16 (compute capability 8.0 or newer:
Ampere, Ada, Hopper, ...), else fp16 autocast with a GradScaler, with SDPA attention; CPU trains in fp32, or in bf16
autocast on request where the CPU has native bf16 (avx512_bf16 or amx_bf16). The precision can be forced with
`precision = "fp32" | "bf16" | "fp16"` (TrainConfig, `--precision`).

The CPU check reads the flags of /proc/cpuinfo (Linux) and is torch-free, so config validation and the CLI/TUI
preflight run it before any worker starts. Not torch's `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: it is private
and also says yes on AVX-512 CPUs without native bf16 (Skylake-X, Ice Lake), where oneDNN emulates bf16 slowly.
"""

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


CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instructions that compute in bf16 natively (Cooper Lake, Sapphire
# Rapids and newer Xeons, Zen 4 and newer)


def cpu_has_native_bf16(flags) -> bool:
    """Whether a CPU with these /proc/cpuinfo flags (a "flags" line's value, or an iterable of flag names) computes
    in bf16 natively."""
    names = set(flags.split()) if isinstance(flags, str) else set(flags or ())
    return any(flag in names for flag in CPU_BF16_FLAGS)


def parse_cpu_flags(cpuinfo_text: str) -> set[str]:
    """The flags of the first processor in /proc/cpuinfo text (x86: "flags : ...")."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


_CPU_FLAGS: list = []


def cpu_flags() -> set[str] | None:
    """This machine's CPU flags from /proc/cpuinfo (read once), or None where there is none (macOS, Windows)."""
    if not _CPU_FLAGS:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                _CPU_FLAGS.append(parse_cpu_flags(fh.read()))
        except OSError:
            _CPU_FLAGS.append(None)
    return _CPU_FLAGS[0]


def cpu_bf16_problem(flags=None) -> str | None:
    """Why bf16 autocast cannot run on this CPU (a message naming `precision`), or None when it can. `flags`: the
    CPU flags to judge (default: this machine's)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return ("precision: bf16 on CPU needs native bf16 (the avx512_bf16 or amx_bf16 CPU flag), and this system "
                "does not say (no /proc/cpuinfo); use precision auto or fp32")
    if cpu_has_native_bf16(flags):
        return None
    return ("precision: bf16 on CPU needs native bf16, and this CPU lacks the avx512_bf16 and amx_bf16 flags "
            "(without them bf16 is emulated, slower than fp32); use precision auto or fp32")


def mixed_precision_problem(device_type: str, pref: str, flags=None) -> str | None:
    """The one rule for mixed precision off CUDA: why `pref` cannot run on a `device_type` of "cpu" or "mps" (a
    message naming `precision`), or None. CUDA is judged by `choose_precision` once the GPU is known."""
    if device_type == "cuda" or pref not in ("bf16", "fp16"):
        return None
    if device_type == "cpu" and pref == "bf16":
        return cpu_bf16_problem(flags)
    needs = "a CUDA GPU" if pref == "fp16" else "a CUDA GPU or a CPU with native bf16"
    return f"precision: {pref} mixed precision needs {needs} but device is {device_type} (use precision auto or fp32)"


def auto_device_precision_problem(device: str, pref: str, cuda) -> str | None:
    """For the preflight: `device = "auto"` with forced mixed precision on a machine where `cuda()` says CUDA is not
    usable (False) means CPU, so the CPU rule applies before any worker starts. None when fine or unknown."""
    if device != "auto" or pref not in ("bf16", "fp16") or cuda() is not False:
        return None
    return mixed_precision_problem("cpu", pref)


COMPILE_MODES = ("auto", "on", "off")


def compile_problem(device_type: str, pref: str) -> str | None:
    """Why `compile = on` cannot run on a `device_type` (a message naming `compile`), or None. Torch-free, so config
    validation and the preflight say it before a worker starts. CPU was measured, not assumed: torch's inductor took
    11 minutes to compile the tiny test model's step on a shared 2-core machine, then ran it 2.5x slower than eager
    (bench/RESULTS.md)."""
    if pref != "on" or device_type == "cuda":
        return None
    if device_type == "cpu":
        return ("compile: on captures the training step as CUDA graphs and needs a CUDA GPU; on a CPU torch's "
                "compiler took minutes to compile even a tiny model and then ran its step slower than plain eager. "
                "Use compile auto or off")
    return f"compile: on needs a CUDA GPU but device is {device_type}; use compile auto or off"


def auto_device_compile_problem(device: str, pref: str, cuda) -> str | None:
    """For the preflight: `device = "auto"` with `compile = on` on a machine where `cuda()` says CUDA is not usable
    (False) means CPU, so the CPU refusal applies before any worker starts. None when fine or unknown."""
    if device != "auto" or pref != "on" or cuda() is not False:
        return None
    return compile_problem("cpu", pref)


def choose_precision(device_type: str, pref: str = "auto", capability: tuple[int, int] | None = None,
                     flags=None) -> str:
    """The precision name ("fp32", "bf16" or "fp16") for a device type, a preference, (CUDA) the GPU's compute
    capability and (CPU) the CPU's flags (default: this machine's). Raises TiwizError naming `precision` when the
    preference cannot run there."""
    if pref not in PRECISIONS:
        raise TiwizError(f"precision: must be one of {', '.join(PRECISIONS)} (got {pref!r})")
    if device_type != "cuda":
        problem = mixed_precision_problem(device_type, pref, flags)
        if problem:
            raise TiwizError(problem)
        return "bf16" if pref == "bf16" else "fp32"  # auto stays fp32 on CPU: see bench/RESULTS.md
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
    forces one of fp32/bf16/fp16 (fp16 needs CUDA; bf16 needs native support: a GPU of 8.0+ or a CPU with
    avx512_bf16/amx_bf16, where it runs as `torch.autocast("cpu", dtype=torch.bfloat16)`)."""
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


def cuda_memory(device) -> tuple[int, int] | None:
    """(free, total) bytes of a CUDA device, counting the caching allocator's reserved-but-unused blocks as free
    (torch hands them out before asking the driver); None off CUDA or when it cannot be read."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    except RuntimeError:
        return None
    return free + max(0, cached), total
