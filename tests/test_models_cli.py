"""`tiwiz demo-model` and `tiwiz to-single-file` through the real CLI."""

import os
import subprocess
import sys
from pathlib import Path

from core.cli import main
from core.models.builtin import write_random_demo_model
from core.models.loader import load_model

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
           "text_encoder/model.safetensors")


def test_demo_model_is_deterministic_across_processes(tiny_model_dir, tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "core.cli", "demo-model", str(out), "--random", "--seed", "0"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    for name in WEIGHTS:  # the fixture wrote seed 0 in this process
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
    other = write_random_demo_model(tmp_path / "seed1", seed=1)
    assert (other / WEIGHTS[0]).read_bytes() != (out / WEIGHTS[0]).read_bytes()
    model = load_model(out)
    assert model.family == "sd1" and model.tokenizer("a cat").input_ids == [49406, 320, 2368, 49407]


def test_demo_model_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["demo-model", str(tmp_path), "--random"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_to_single_file_command(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tiny.safetensors"
    assert main(["to-single-file", str(tiny_model_dir), str(out)]) == 0
    assert load_model(out).family == "sd1"
    assert main(["to-single-file", str(tiny_model_dir), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
