"""Problems found before a worker starts: a data folder without images, a trigger word in the CLIP vocabulary, and
`--device cuda` without CUDA fail `tiwiz train` at once, naming the flag, and leave no run folder behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.training.config import TrainConfig
from core.training.preflight import problems
from train_helpers import make_images

ROOT = str(Path(__file__).resolve().parents[1])


def tiwiz(*args, runs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TIWIZ_RUNS_DIR": str(runs)}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)


def config(tmp_path, **changes):
    base = dict(model=str(tmp_path), data=str(tmp_path / "data"), name="zxq-cat", steps=2, device="cpu")
    base.update(changes)
    return TrainConfig.from_dict(base, validate=False)


def test_problems_name_the_field(tmp_path):
    make_images(tmp_path / "data", n=1)
    (tmp_path / "empty").mkdir()
    assert problems(config(tmp_path)) == []
    assert problems(config(tmp_path, data=str(tmp_path / "empty")))[0].startswith("data: ")
    assert problems(config(tmp_path, data=str(tmp_path / "empty")), cli=True)[0].startswith("--data: ")
    (found,) = problems(config(tmp_path, name="cat"), cli=True)
    assert found.startswith("--name: ") and "vocabulary" in found
    (found,) = problems(config(tmp_path, device="cuda"), cli=True, cuda=lambda: False)
    assert found.startswith("--device: ") and "CUDA" in found
    assert problems(config(tmp_path, device="cuda"), cuda=lambda: True) == []
    assert problems(config(tmp_path, device="cuda"), cuda=lambda: None) == []  # unknown: the worker decides


@pytest.mark.parametrize("case", ["vocabulary-name", "no-images", "cuda"])
def test_train_refuses_before_starting_a_worker(tmp_path, tiny_model_dir, case):
    import torch

    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    data = make_images(tmp_path / "data", n=1)
    (tmp_path / "empty").mkdir()
    args = {"vocabulary-name": ["--name", "cat"],
            "no-images": ["--name", "zxq-cat", "--data", str(tmp_path / "empty")],
            "cuda": ["--name", "zxq-cat", "--device", "cuda"]}[case]
    if "--data" not in args:
        args += ["--data", str(data)]
    runs = tmp_path / "runs"
    done = tiwiz("train", "--model", str(tiny_model_dir), "--steps", "2", "--detach", *args, runs=runs)
    assert done.returncode != 0
    flag = {"vocabulary-name": "--name", "no-images": "--data", "cuda": "--device"}[case]
    assert flag + ":" in done.stderr and "Traceback" not in done.stderr
    assert not runs.exists() or not any(runs.iterdir())
