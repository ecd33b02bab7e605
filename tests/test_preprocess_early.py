"""`tiwiz preprocess` fails at once, writing nothing, for an empty source folder and for a BLIP hub id that is not
cached on a machine that cannot download it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from train_helpers import make_images

ROOT = str(Path(__file__).resolve().parents[1])


def tiwiz(*args, env=None):
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def test_empty_folder_writes_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / ".hidden").write_text("x")
    done = tiwiz("preprocess", str(tmp_path / "src"), str(tmp_path / "dest"))
    assert done.returncode != 0 and "No image files" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "dest").exists()


def test_uncached_blip_model_offline_fails_at_once(tmp_path):
    make_images(tmp_path / "src", n=1)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    done = tiwiz("preprocess", str(tmp_path / "src"), str(tmp_path / "dest"), "--blip", "tiwiz-test/no-such-blip",
                 env=env)
    assert done.returncode != 0 and "not available on this machine" in done.stderr, done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr and not (tmp_path / "dest").exists()
    assert time.monotonic() - started < 30  # the hub client alone retried for 93 s


def test_uncached_blip_model_without_network_fails_at_once(tmp_path):
    """No HF_HUB_OFFLINE, and the hub is unreachable (no network here; elsewhere, a proxy that goes nowhere)."""
    make_images(tmp_path / "src", n=1)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "https://127.0.0.1:9"}
    started = time.monotonic()
    done = tiwiz("preprocess", str(tmp_path / "src"), str(tmp_path / "dest"), "--blip", "tiwiz-test/no-such-blip",
                 env=env)
    assert done.returncode != 0 and "cannot be reached" in done.stderr, done.stderr
    assert time.monotonic() - started < 30  # the hub client alone retried for 93 s
