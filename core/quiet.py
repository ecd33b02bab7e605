"""No third-party noise in tiwiz's output: transformers' and diffusers' info/warning chatter ("install torchvision",
which would replace a CPU torch with a CUDA one, "install accelerate", torchvision fallbacks) and their loader progress
bars. Set as environment defaults when `core` is imported, before those libraries are, so the worker and every
command inherit them; a user who exports TRANSFORMERS_VERBOSITY=info (or the others) still gets the chatter.
Errors always show."""

from __future__ import annotations

import os

QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def quiet_loaded_libraries() -> None:
    """Also silence diffusers' own progress bars (`Loading pipeline components`), which no variable controls; call
    after diffusers is imported."""
    if os.environ.get("DIFFUSERS_VERBOSITY", "error") != "error":
        return
    try:
        import diffusers
    except ImportError:
        return
    diffusers.utils.logging.disable_progress_bar()
