"""`tiwiz demo` reads plainly (issue 25 items 19, 39): the model named by its family, no auto-stop internals on every
validation line, the best step said when it moves, progress lines without bars in a log, the grid's rendering
followed, the demo folder ignored by git, and the threads chosen before the demo's own work loads the machine."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.progress import ProgressView
from core.runs import run_events as ev

ROOT = Path(__file__).resolve().parents[1]


def events(auto_stop: bool) -> list:
    out = [ev.Started(step=0, max_steps=90, name="demo-heart", device="cpu", precision="fp32", n_images=16,
                      model="shapes-world", family="sd1", auto_stop=auto_stop)]
    for step in range(1, 91):
        out.append(ev.Step(step=step, max_steps=90, loss=0.01, lr=0.002, it_s=3.0, elapsed=step / 3))
        if step % 30 == 0:
            best = 30 if step < 90 else 90
            out.append(ev.Validation(step=step, val_loss=0.04, holdout_loss=0.04, best_step=best, best_basis="holdout",
                                     auto_stop_window=100, auto_stop_threshold=0.15, auto_stop_watched=step))
    return out


@pytest.mark.parametrize("auto_stop", [False, True])
def test_a_log_of_the_run_says_each_thing_once_and_draws_no_bars(auto_stop):
    out = io.StringIO()
    view = ProgressView(out=out, tty=False)
    for event in events(auto_stop):
        view.live(event)
    view.end()
    text = out.getvalue()
    assert "model shapes-world (SD 1.x)" in text.splitlines()[0]
    validations = [line for line in text.splitlines() if line.startswith("validation loss")]
    assert len(validations) == 3
    assert "best step 30" in validations[0] and "best step" not in validations[1] and "best step 90" in validations[2]
    assert "auto-stop" not in text  # off, or on but still filling its first window: nothing worth a word yet
    assert "%|" not in text and "█" not in text
    assert any(line.startswith("step 90/90 (100%) · 3.00 it/s") for line in text.splitlines())


def test_the_demo_folder_is_ignored_by_git():
    done = subprocess.run(["git", "check-ignore", "-q", "tiwiz-demo/run/events.jsonl"], cwd=ROOT)
    assert done.returncode == 0


@pytest.mark.slow  # the real demo, 10 steps, and its before/after render (~2 min on a loaded 2-core machine)
def test_the_demo_end_to_end_reads_plainly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)  # the demo picks its own threads
    done = subprocess.run([sys.executable, "-m", "core.cli", "demo", "--output", str(tmp_path / "demo"),
                           "--steps", "10"], capture_output=True, text=True, cwd=tmp_path, timeout=900, env=env)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "model shapes-world (SD 1.x)" in text and "model model" not in text
    assert "auto-stop" not in text and "%|" not in text
    assert "denoising step 50/50" in text  # the grid's render is followed
    from core.training.config import TrainConfig

    config = TrainConfig.from_toml(tmp_path / "demo" / "run" / "config.toml")
    assert config.threads >= 1  # chosen before the demo's own work, not left to the worker's later reading
    assert (tmp_path / "demo" / "before_after.png").is_file()
