"""tiwiz's own processes print no third-party noise: no "install torchvision/accelerate" hints (following them would
replace a CPU torch), no loader progress bars. Checked on the real code paths in a fresh interpreter, the way every
command and the worker start (importing `core` first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
NOISE = ("torchvision", "accelerate", "Loading pipeline components", "Loading weights", "it/s]", "%|")


def run(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**clean, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env})


@pytest.mark.slow  # a fresh interpreter importing torch, diffusers and transformers (~45 s on a loaded machine)
def test_model_and_pipeline_loading_is_silent(tiny_model_dir):
    done = run("import core\n"
               "from core.models.loader import load_model\n"
               "from core.world.demo_job import load_pipeline\n"
               f"load_model({str(tiny_model_dir)!r})\n"
               f"load_pipeline({str(tiny_model_dir)!r})\n"
               "import transformers, diffusers\n"
               "from transformers import CLIPImageProcessor\n")
    assert done.returncode == 0, done.stderr
    noisy = [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, done.stderr


def test_a_user_can_still_ask_for_the_chatter(monkeypatch):
    from core.quiet import quiet_environment

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")
    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    quiet_environment()
    assert os.environ["TRANSFORMERS_VERBOSITY"] == "info" and os.environ["DIFFUSERS_VERBOSITY"] == "error"


def test_accelerate_is_a_dependency():
    import tomllib

    deps = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.split(">")[0].split("=")[0].strip() == "accelerate" for d in deps)
    import accelerate  # noqa: F401  (installed in this environment)
