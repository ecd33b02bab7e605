"""A detached worker on a real full disk (issue 13, item 2): the run ends "failed: the disk is full ..." in
status.json (the worker keeps space in reserve for its last words), never "killed", and the user's screen shows the
last good checkpoint and what to do."""

import pytest

from core.errors import TiwizError
from core.events import JsonlSink, ListSink
from core.runs import api as runapi
from core.runs import folder as runs
from small_disk import fill_disk, small_disk  # noqa: F401 (fixture)
from test_runs_worker import cli, next_events, wait_done
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

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
    its process ends, and its reason names the checkpoint it can resume from."""
    data = make_images(tmp_path / "data", n=2)
    run = runapi.start_run(tiny_config(tiny_model_dir, data, output=str(small_disk / "run"), steps=5000,
                                       save_every=2))
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "checkpoint", "the first checkpoint")
    runs.send_command(run, "stop")
    stopped = wait_done(run)
    assert stopped.state == "stopped" and stopped.last_checkpoint, stopped
    spacer = small_disk / "spacer.bin"
    spacer.write_bytes(b"\1" * (100 << 10))
    fill_disk(small_disk)
    spacer.unlink()  # about 100 KB free: less than the worker's usual reserve
    for attempt in ("little space", "no space"):
        runapi.resume_run(run)
        info = wait_done(run)
        assert info.state == "failed", (attempt, info, runs.read_status(run))
        assert "disk is full" in info.reason, (attempt, info.reason)
        # the checkpoint saved before the stop is still there to resume from (not "No checkpoint was saved yet")
        assert info.last_checkpoint >= stopped.last_checkpoint, (attempt, info)
        assert f"last good checkpoint is step {info.last_checkpoint}" in info.reason, (attempt, info.reason)
        assert not (run / ".tiwiz-reserve").exists(), attempt
        assert runs.read_status(run)["state"] == "failed"
        fill_disk(small_disk, "filler-2.bin")
    listing = cli("runs", "--root", small_disk)
    assert "failed" in listing.stdout and "killed" not in listing.stdout, listing.stdout


def test_a_resumed_run_failing_in_setup_names_its_checkpoint(tmp_path, tiny_model_dir, small_disk, one_thread):
    """Issue 25, item 31: a resumed run that meets the full disk in setup (here its first event: batch_size over the
    image count makes setup warn) says the checkpoint of its resume state is there to go back to, never "No checkpoint
    was saved yet"."""
    from core.training.trainer import Trainer

    data = make_images(tmp_path / "data", n=2)
    out = small_disk / "run"
    Trainer(tiny_config(tiny_model_dir, data, steps=2, save_every=2, batch_size=3), out, ListSink()).run()
    fill_disk(small_disk)
    events = JsonlSink(small_disk / "events.jsonl")  # a new file on the full disk: its first line cannot be written
    with pytest.raises(TiwizError) as err:
        Trainer(tiny_config(tiny_model_dir, data, steps=4, save_every=2, batch_size=3), out, events).run(resume=True)
    message = str(err.value)
    assert "disk is full" in message, message
    assert "No checkpoint was saved yet" not in message and "of step 0" not in message, message
    assert "last good checkpoint is step 2" in message and f"tiwiz resume {out}" in message, message
