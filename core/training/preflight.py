"""Checks that would otherwise fail only once the worker runs (after model loading, tens of seconds later, leaving a
failed run folder behind): a data folder without images, a trigger word diffusers refuses, `--device cuda` on a
machine without CUDA, an optimizer whose package is missing (or 8-bit AdamW without CUDA). The CLI, the queue and the
Training screen run them before spawning anything.

Torch-free except `cuda_available`, which the TUI runs in a subprocess (`python -m core.training.preflight cuda`).
"""

from __future__ import annotations

import subprocess
import sys

from core.errors import TiwizError


def _label(field: str, cli: bool) -> str:
    return "--" + field.replace("_", "-") if cli else field


def data_problem(data: str, cli: bool = False) -> str | None:
    from core.prep.captions import list_images

    try:
        images = list_images(data)
    except TiwizError as exc:
        return f"{_label('data', cli)}: {exc}"
    if not images:
        return (f"{_label('data', cli)}: {data} holds no images (.png, .jpg, .webp, …); point it at the folder of "
                "training images (preprocess writes one)")
    return None


def trigger_problem(name: str, vectors: int, cli: bool = False) -> str | None:
    from core.embeddings.vectors import sanitize_name, trigger_problems

    try:
        problems = trigger_problems(None, sanitize_name(name), vectors)
    except TiwizError as exc:
        return f"{_label('name', cli)}: {exc}"
    except Exception:  # the bundled tokenizer is unreadable: the trainer still checks with the model's own
        return None
    if not problems:
        return None
    return (f"{_label('name', cli)}: {'; '.join(problems)}. Pick a made-up word such as 'zxq-{name.lower()}'")


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cuda_available_in_subprocess(timeout: float = 120.0) -> bool | None:
    """`cuda_available()` in a fresh interpreter (for the TUI, which never imports torch). None: could not tell."""
    try:
        done = subprocess.run([sys.executable, "-m", "core.training.preflight", "cuda"], capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"yes": True, "no": False}.get(done.stdout.strip())


def device_problem(device: str, cli: bool = False, cuda=cuda_available) -> str | None:
    if not str(device).startswith("cuda"):
        return None
    available = cuda()
    if available is False:
        return (f"{_label('device', cli)}: {device} was asked for, but no CUDA GPU is usable here (no GPU, no driver, "
                "or a CPU build of torch); use --device auto or cpu" if cli else
                f"device: {device} was asked for, but no CUDA GPU is usable here (no GPU, no driver, or a CPU build "
                "of torch); choose auto or cpu")
    return None


def optimizer_problem(optimizer: str, device: str, cli: bool = False, cuda=cuda_available) -> str | None:
    """An optimizer whose package is missing, or 8-bit AdamW off CUDA (the device "auto" is resolved with `cuda`; an
    unknown answer leaves the CUDA requirement to the worker). Finds the package without importing it."""
    from core.training.optimizers import check_available

    device_type = None
    if optimizer == "adamw8bit":
        device = str(device)
        if device == "auto":
            available = cuda()
            device_type = None if available is None else ("cuda" if available else "cpu")
        else:
            device_type = device.split(":")[0]
    try:
        check_available(optimizer, device_type, load=False)
    except TiwizError as exc:
        text = str(exc)
        return _label("optimizer", cli) + text[len("optimizer"):] if text.startswith("optimizer:") else text
    return None


def _asked_once(cuda):
    """`cuda` answered at most once (in the TUI each answer is a subprocess that imports torch)."""
    answer = []

    def once():
        if not answer:
            answer.append(cuda())
        return answer[0]
    return once


def problems(config, *, cli: bool = False, cuda=cuda_available) -> list[str]:
    """Everything wrong with starting `config` now (empty: fine). `cuda` answers whether CUDA works (None: unknown)."""
    found = [data_problem(config.data, cli), trigger_problem(config.name, config.vectors, cli)]
    return [p for p in found if p] + device_problems(config, cli=cli, cuda=cuda)


def device_problems(config, *, cli: bool = False, cuda=cuda_available) -> list[str]:
    """The problems that depend on whether CUDA works (`cuda` is asked once, and only if one needs it): the TUI runs
    these again at Start with the answer of a subprocess."""
    from core.models.device import auto_device_compile_problem, auto_device_precision_problem  # torch-free

    cuda = _asked_once(cuda)
    found = [device_problem(config.device, cli, cuda), optimizer_problem(config.optimizer, config.device, cli, cuda),
             auto_device_precision_problem(config.device, config.precision, cuda),
             auto_device_compile_problem(config.device, config.compile, cuda)]
    return [p for p in found if p]


def check(config, *, cli: bool = False, cuda=cuda_available) -> None:
    """Raise TiwizError naming every problem `problems` finds."""
    found = problems(config, cli=cli, cuda=cuda)
    if found:
        raise TiwizError("\n".join(found))


if __name__ == "__main__":
    if sys.argv[1:] == ["cuda"]:
        print("yes" if cuda_available() else "no")
