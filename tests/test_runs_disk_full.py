"""A detached worker on a real full disk (issue 13, item 2): the run ends "failed: the disk is full ..." in
status.json (the worker keeps space in reserve for its last words), never "killed", and the user's screen shows the
last good checkpoint and what to do."""

import pytest

from core.runs import api as runapi
from core.runs import folder as runs
from small_disk import fill_disk, small_disk  # noqa: F401 (fixture)
from test_runs_worker import cli, next_events, wait_done
from train_helpers import make_images, tiny_config

pytestmark = pytest.mark.slow  # a real detached worker: 20-40 s on 2 busy cores


def test_full_disk_ends_failed_with_the_reason_on_screen(tmp_path, tiny_model_dir, small_disk):
    data = make_images(tmp_path / "data", n=2)
    run = runapi.start_run(tiny_config(tiny_model_dir, data, output=str(small_disk / "run"), steps=5000,
                                       save_every=2))
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "checkpoint", "the first checkpoint")
    fill_disk(small_disk)
    info = wait_done(run)
    assert info.state == "failed", (info, runs.read_status(run))
    assert "disk is full" in info.reason and "free" in info.reason, info.reason
    assert "last good checkpoint is step" in info.reason and "tiwiz resume" in info.reason
    assert info.reason.count("tiwiz resume") == 1
    shown = cli("attach", run, "--no-follow")
    assert "disk is full" in shown.stdout and "last good checkpoint is step" in shown.stdout, shown.stdout
    listing = cli("runs", "--root", small_disk)
    assert "failed" in listing.stdout and "killed" not in listing.stdout, listing.stdout


def test_resumed_worker_on_a_full_disk_still_says_failed(tmp_path, tiny_model_dir, small_disk):
    """Issue 25, item 31: a worker resumed (as the queue retries it) with under 256 KB free, then with none at all,
    ends "failed: the disk is full" in status.json (never "running" or "killed"), leaves no reserve file behind, and
    its process ends."""
    data = make_images(tmp_path / "data", n=2)
    run = runapi.start_run(tiny_config(tiny_model_dir, data, output=str(small_disk / "run"), steps=5000,
                                       save_every=2))
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "checkpoint", "the first checkpoint")
    runs.send_command(run, "stop")
    assert wait_done(run).state == "stopped"
    spacer = small_disk / "spacer.bin"
    spacer.write_bytes(b"\1" * (100 << 10))
    fill_disk(small_disk)
    spacer.unlink()  # about 100 KB free: less than the worker's usual reserve
    for attempt in ("little space", "no space"):
        runapi.resume_run(run)
        info = wait_done(run)
        assert info.state == "failed", (attempt, info, runs.read_status(run))
        assert "disk is full" in info.reason, (attempt, info.reason)
        assert not (run / ".tiwiz-reserve").exists(), attempt
        assert runs.read_status(run)["state"] == "failed"
        fill_disk(small_disk, "filler-2.bin")
    listing = cli("runs", "--root", small_disk)
    assert "failed" in listing.stdout and "killed" not in listing.stdout, listing.stdout
