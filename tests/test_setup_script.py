"""`./tiwiz.sh`'s decisions, via `--print-plan` in a scratch copy of the repository with stand-in interpreters and
GPU tools on PATH: which venv, which torch build from where, whether the project is (re)installed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for an interpreter: the version check passes, `-` (the torch probe) prints $FAKE_TORCH or fails,
# `-m pip config list` prints $FAKE_PIP_CONFIG.
case "$1" in
  -c) exit 0 ;;
  -) cat >/dev/null; [[ -n "${FAKE_TORCH:-}" ]] && { echo "$FAKE_TORCH"; exit 0; }; exit 1 ;;
  -m) [[ "$2" == pip && "$3" == config ]] && printf '%s\\n' "${FAKE_PIP_CONFIG:-}"; exit 0 ;;
esac
exit 0
"""


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def repo(tmp_path):
    shutil.copy(ROOT / "tiwiz.sh", tmp_path / "tiwiz.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    executable(tmp_path / "bin" / "python3", FAKE_PYTHON)
    return tmp_path


def plan(repo: Path, *args, gpu: bool = False, **env) -> str:
    if gpu:
        executable(repo / "bin" / "nvidia-smi", '#!/usr/bin/env bash\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: x)"\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TIWIZ_", "VIRTUAL_ENV"))}
    done = subprocess.run(["bash", str(repo / "tiwiz.sh"), "--print-plan", *args], capture_output=True, text=True,
                          timeout=60, env={**clean, "PATH": f"{repo / 'bin'}:/usr/bin:/bin", **env})
    assert done.returncode == 0, done.stderr
    assert not (repo / ".venv").exists() or (repo / ".venv" / "bin" / "python").exists()
    return done.stderr


def test_fresh_machine_without_gpu_takes_the_cpu_build_from_pytorchs_index(repo):
    out = plan(repo, "test")
    assert "venv: create" in out and "--system-site-packages" not in out
    assert "CPU build, from https://download.pytorch.org/whl/cpu" in out
    assert "pip install -e .[test]" in out and "python -m pytest -q" in out
    assert not (repo / ".venv").exists()  # a plan changes nothing


def test_a_local_wheel_mirror_serves_the_cpu_build(repo):
    out = plan(repo, "demo", PIP_FIND_LINKS="/opt/wheels")
    assert "torch==2.13.0, the CPU build, from the local wheel mirror" in out and "run: tiwiz demo" in out
    out = plan(repo, "demo", FAKE_PIP_CONFIG="global.extra-index-url='file:///opt/pypi/simple'")
    assert "local wheel mirror" in out


def test_a_gpu_machine_gets_the_cuda_build(repo):
    out = plan(repo, "demo", gpu=True)
    assert "the CUDA build (an NVIDIA GPU is present)" in out and "--index-url" not in out


def test_a_pods_cuda_torch_is_kept(repo):
    out = plan(repo, "test", gpu=True, FAKE_TORCH="2.5.1+cu121 12.1")
    assert "--system-site-packages (keeps this machine's CUDA torch 2.5.1+cu121)" in out
    assert "keep the installed torch 2.5.1+cu121 (CUDA 12.1 build)" in out and "install torch" not in out


def test_a_second_run_reuses_the_venv_and_the_install(repo):
    venv_python = executable(repo / ".venv" / "bin" / "python", FAKE_PYTHON)
    out = plan(repo, "test", FAKE_TORCH="2.13.0+cpu cpu")
    assert "venv: reuse" in out and "keep the installed torch 2.13.0+cpu (CPU build)" in out
    want = subprocess.run("(cat pyproject.toml; echo 'extras=[test]') | cksum | cut -d' ' -f1", shell=True,
                          cwd=repo, capture_output=True, text=True).stdout.strip()
    (repo / ".venv" / ".tiwiz-installed").write_text(want + "\n")
    (repo / ".venv" / ".tiwiz-installed.test").write_text(want + "\n")
    for mode in ("test", "demo"):  # a venv set up for the tests serves the demo too
        out = plan(repo, mode, FAKE_TORCH="2.13.0+cpu cpu")
        assert "project: already installed" in out, out
    assert venv_python.exists()


def test_ci_calls_the_test_command():
    assert "tiwiz.sh test" in (ROOT / ".ci" / "run").read_text()


def test_the_torch_probe_reads_its_version_without_importing_it(tmp_path):
    """Every launch asks which torch the venv has: importing torch for that took 5 s of `./tiwiz.sh` (7 s to the
    first screen against 1.7 s for `tiwiz`; issue 25 item 9). The probe reads torch/version.py instead."""
    import sys

    shutil.copy(ROOT / "tiwiz.sh", tmp_path / "tiwiz.sh")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('torch was imported')\n")
    (fake / "version.py").write_text("from typing import Optional\n__version__ = '9.9.9+cu124'\n"
                                     "cuda: Optional[str] = '12.4'\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TIWIZ_", "VIRTUAL_ENV"))}
    done = subprocess.run(["bash", str(tmp_path / "tiwiz.sh"), "--print-plan"], capture_output=True, text=True,
                          timeout=60, env={**clean, "PYTHON": sys.executable, "PYTHONPATH": str(tmp_path / "site")})
    assert done.returncode == 0, done.stderr
    assert "keeps this machine's CUDA torch 9.9.9+cu124" in done.stderr
    assert not marker.exists()
