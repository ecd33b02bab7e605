"""Issue 13, items 12 and 13: a run killed before its first checkpoint is restarted from step 0 by `tiwiz resume`
(which says so), and a second `tiwiz train --detach` into a folder where a worker trains says so instead of
printing success."""

import os
import signal
import subprocess
import sys

import pytest

from core.runs import api as runapi
from core.runs import folder as runs
from test_runs_worker import ROOT, cli, next_events, wait_done
from train_helpers import make_images, tiny_config

pytestmark = pytest.mark.slow  # real detached workers: 20-60 s each on 2 busy cores


def _kill_worker(run_dir) -> None:
    """Kill the worker holding the folder's lock (its pid is in worker.lock) and any pid status.json names."""
    pids = set()
    try:
        pids.add(int((run_dir / runs.LOCK).read_text().strip() or 0))
    except (OSError, ValueError):
        pass
    pids.add((runs.read_status(run_dir) or {}).get("pid") or 0)
    for pid in pids - {0}:
        if runs.pid_is_worker(pid, run_dir):
            os.kill(pid, signal.SIGKILL)


def test_resume_restarts_a_run_killed_before_its_first_checkpoint(tmp_path, tiny_model_dir):
    data = make_images(tmp_path / "data", n=2)
    run = runapi.start_run(tiny_config(tiny_model_dir, data, output=str(tmp_path / "run"), steps=5000,
                                       save_every=1000))
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "step" and e["step"] >= 2, "step 2")
    os.kill(runs.read_status(run)["pid"], signal.SIGKILL)
    assert wait_done(run).state == "killed"
    assert not (run / runs.STATE).exists()

    done = cli("resume", run, "--detach")
    assert done.returncode == 0, done.stderr
    assert "step 0" in done.stdout and "same config" in done.stdout, done.stdout
    seen = next_events(follower, lambda e: e["type"] == "started", "the restart")
    assert seen[-1]["step"] == 0
    next_events(follower, lambda e: e["type"] == "step", "a step of the restarted run")
    _kill_worker(run)
    wait_done(run)


def test_a_second_detached_train_into_a_busy_folder_says_a_worker_is_there(tmp_path, tiny_model_dir):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "core.cli", "train", "--model", tiny_model_dir, "--data", data, "--name", "tcat",
            "--steps", "5000", "--width", "64", "--height", "64", "--save-every", "0", "--preview-every", "0",
            "--device", "cpu", "--output", out, "--detach"]
    procs = [subprocess.Popen(list(map(str, args)), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, stdin=subprocess.DEVNULL) for _ in range(2)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    try:
        codes = sorted(r[2] for r in results)
        assert codes[0] == 0 and codes[1] != 0, results
        loser = next(r for r in results if r[2] != 0)
        assert "already" in loser[1] and "worker" in loser[1], loser
        info = runs.inspect_run(out)
        assert info.alive and info.state == "running"
        # the winner's worker is untouched: its status names it, and it keeps training
        winner_pid = info.pid
        assert runs.pid_is_worker(winner_pid, out)
    finally:
        _kill_worker(out)
        wait_done(out)
