"""`tiwiz train` end to end in real subprocesses (detached worker + attach by default, and --foreground)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from core.training.config import TrainConfig
from train_helpers import make_images, one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiwiz(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, env=env,
                          cwd=kwargs.pop("cwd", ROOT), timeout=300, **kwargs)


def test_train_cli_end_to_end_with_config_file(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "out"
    cfg_file = tmp_path / "cat.toml"
    cfg_file.write_text(f'model = "{tiny_model_dir}"\ndata = "{data}"\nname = "zxqcat"\nsteps = 50\n'
                        'width = 64\nheight = 64\nlr = "0.01"\npreview_steps = 2\n')
    result = _tiwiz("train", "--config", str(cfg_file), "--steps", "4", "--preview-every", "2", "--save-every", "2",
                    "--output", str(out), "--seed", "7", "--device", "cpu", "--vectors", "2", "--init-text", "cat")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(out)
    assert "4/4" in result.stdout + result.stderr
    for rel in ["zxqcat.pt", "zxqcat.safetensors", "embeddings/zxqcat-2.safetensors", "embeddings/zxqcat-4.pt",
                "previews/zxqcat-2.png", "previews/zxqcat-4.png", "loss.csv", "config.toml", "state/latest.pt"]:
        assert (out / rel).is_file(), rel
    saved = TrainConfig.from_toml(out / "config.toml")
    assert (saved.steps, saved.seed, saved.vectors, saved.lr, saved.preview_every) == (4, 7, 2, "0.01", 2)
    assert torch.load(out / "zxqcat.pt", weights_only=True)["string_to_param"]["*"].shape == (2, 32)


def test_train_cli_bad_config_is_a_clear_error(tiny_model_dir, tmp_path):
    bad = _tiwiz("train", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--name", "x", "--lr", "0.1:abc")
    assert bad.returncode == 2 and "lr:" in bad.stderr and "Traceback" not in bad.stderr
    bad = _tiwiz("train", "--model", str(tiny_model_dir), "--data", str(tmp_path), "--name", "x", "--resize", "fit")
    assert bad.returncode == 2 and "crop" in bad.stderr and "stretch" in bad.stderr


def test_foreground_ctrl_c_saves_and_stops(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "core.cli", "train", "--model", str(tiny_model_dir), "--data",
                             str(data), "--name", "zxqint", "--steps", "100000", "--foreground", "--width", "64", "--height", "64",
                             "--preview-every", "0", "--save-every", "0", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stderr:
            if line.startswith("started at step 0 of 100000: zxqint"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "stopped at step" in stdout and stdout.strip().splitlines()[-1] == str(out)
    assert "it/s" in stderr and "loss " in stderr and "Traceback" not in stderr  # plain progress lines off a terminal
    assert not (out / "previews").exists() or not list((out / "previews").iterdir())  # --preview-every 0
    step = torch.load(out / "state" / "latest.pt", weights_only=True)["step"]
    assert 1 <= step < 100000
    assert (out / "zxqint.safetensors").is_file()
    # A foreground run writes its run folder like a detached worker: `tiwiz runs` and `tiwiz attach` see it.
    from core.runs import folder as runs
    from core.runs.run_state import RunState

    info = runs.inspect_run(out)
    assert (info.state, info.step, info.alive) == ("stopped", step, False)
    assert runs.read_status(out)["foreground"] is True
    events, report = runs.read_events(out)
    assert [e["type"] for e in events][-4:] == ["stopping", "checkpoint", "stopped", "exit"] and report["bad_lines"] == 0
    assert RunState.fold(events).step == step
    listed = _tiwiz("runs", "--root", str(tmp_path))
    assert "out" in listed.stdout and "stopped" in listed.stdout and f"{step}/100000" in listed.stdout
