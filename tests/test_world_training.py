"""tools/train_world.py, the script that builds the shipped world model: deterministic, and its output is an ordinary
model folder our loader takes. Run as a real subprocess with a few steps of each stage."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
           "vae/diffusion_pytorch_model.safetensors")


def _train(out: Path, *extra: str) -> Path:
    cmd = [sys.executable, str(ROOT / "tools" / "train_world.py"), "--out", str(out), "--vae-steps", "3",
           "--unet-steps", "3", "--images", "64", "--threads", "1", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out


# Three real training subprocesses (~40 s each on a loaded 2-core machine): `-m "not slow"` skips them locally.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("world-train")
    a = _train(base / "a")
    # the frozen run needs no VAE of its own: it reuses a's (the text encoder is what it is about)
    frozen = _train(base / "frozen", "--stage", "unet", "--vae-from", str(a), "--te-lr", "0")
    return a, _train(base / "b"), frozen


def test_same_seed_same_weights(runs):
    a, b, _ = runs
    for name in WEIGHTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_text_encoder_is_trained_unless_frozen(runs):
    from safetensors.torch import load_file

    a, _, frozen = runs
    trained = load_file(str(a / "text_encoder/model.safetensors"))
    fixed = load_file(str(frozen / "text_encoder/model.safetensors"))
    assert trained.keys() == fixed.keys()
    assert any(not (trained[k] == fixed[k]).all() for k in trained)


def test_output_loads_through_our_loader(runs):
    from core.models.builtin import copy_clip_tokenizer
    from core.models.loader import load_model

    a, _, _ = runs
    copy_clip_tokenizer(a / "tokenizer")
    model = load_model(a, device="cpu")
    assert model.family == "sd1" and model.prediction_type == "epsilon"
    assert model.vae.config.scaling_factor > 0
