"""The optimizer of the embedding vectors (`optimizer` in TrainConfig). None of the optional ones is a hard
dependency: each is imported only when chosen, and a missing package is a one-line TiwizError naming what to
install.

- adamw: torch.optim.AdamW, weight decay 0 (A1111's choice: decay would pull the vectors toward zero).
- prodigy: Prodigy (Mishchenko & Defazio, 2023; `pip install 'tiwiz[prodigy]'`), which estimates the step size
  itself; lr multiplies its estimate, so lr should be 1 (a warning says so otherwise). Weight decay 0, bias correction
  on.
- adamw8bit: bitsandbytes' AdamW8bit (CUDA only; `pip install 'tiwiz[bnb]'`). bitsandbytes keeps 32-bit state for
  tensors under 4096 elements, so for a few vectors it saves nothing; it is here for parity with kohya's flag.
"""

from __future__ import annotations

from core.errors import TiwizError

OPTIMIZERS = ("adamw", "prodigy", "adamw8bit")


EXTRAS = {"prodigy": ("prodigyopt", "prodigy"), "adamw8bit": ("bitsandbytes", "bnb")}  # package, pyproject extra


def _install_hint(name: str) -> str:
    package, extra = EXTRAS[name]
    return f"pip install {package} (or pip install 'tiwiz[{extra}]'), or choose adamw"


def _installed(package: str) -> bool:
    """Whether `package` can be found, without importing it (it may import torch: the TUI never does)."""
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken install, or sys.modules holding None (what a missing one looks like)
        return False


def check_available(name: str, device_type: str | None, *, load: bool = True) -> None:
    """Raise TiwizError (naming the field and what to install) if `name` cannot run here. `device_type` None: not
    known yet (the CUDA requirement is not checked). `load=False` only looks for the package (no import: the
    preflight of the TUI and the queue); the trainer loads it, which also catches a bitsandbytes without its CUDA
    library."""
    if name not in OPTIMIZERS:
        raise TiwizError(f"optimizer: must be one of {', '.join(OPTIMIZERS)} (got {name!r})")
    if name == "adamw":
        return
    if name == "adamw8bit" and device_type is not None and device_type != "cuda":
        raise TiwizError(f"optimizer: adamw8bit (bitsandbytes) needs a CUDA GPU, and this run is on "
                         f"{device_type}; choose adamw")
    package = EXTRAS[name][0]
    if not load:
        if not _installed(package):
            raise TiwizError(f"optimizer: {name} needs the {package} package: {_install_hint(name)}")
        return
    try:
        __import__(package)
    except ImportError:
        raise TiwizError(f"optimizer: {name} needs the {package} package: {_install_hint(name)}") from None
    except Exception as exc:  # bitsandbytes raises its own errors when its CUDA library does not load
        raise TiwizError(f"optimizer: {name}: {package} does not load here ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); choose adamw") from None


def make_optimizer(name: str, params, lr: float, device_type: str = "cpu"):
    """The optimizer `name` over `params` at learning rate `lr`."""
    import torch

    check_available(name, device_type)
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(params, lr=lr, weight_decay=0.0, use_bias_correction=True, safeguard_warmup=True)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=0.0)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def lr_warning(name: str, lr_text: str) -> str | None:
    """A warning for an lr that does not suit the optimizer (Prodigy wants 1), else None."""
    if name != "prodigy":
        return None
    try:
        value = float(lr_text)
    except (TypeError, ValueError):
        return None  # a schedule: the user chose its values
    if not 0.1 <= value <= 10:
        return (f"optimizer prodigy estimates the step size itself and multiplies it by lr; lr is {value:g}, so "
                "steps are that much smaller than Prodigy's estimate. Use lr 1 with prodigy")
    return None
