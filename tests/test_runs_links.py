"""A run folder never makes tiwiz write or delete through a link (issue 25, item 26): a `commands` symlink (from an
archive or a shared volume) must not make the worker or `start`/`resume` delete the files it points at, and no other
file of the layout (lock, log, reserve file, temp files) is written or removed through a link."""

import os
from pathlib import Path

import pytest

from core.atomic import remove_stale_temps
from core.errors import TiwizError
from core.runs import api as runapi
from core.runs import folder as runs


def victim_folder(tmp_path: Path) -> Path:
    """A folder outside the run holding files named like commands and like our own files: all must survive."""
    victim = tmp_path / "precious"
    victim.mkdir()
    for name in ("stop", "save", "preview", "notes.txt", "model.safetensors", ".x.abc.tmp"):
        (victim / name).write_text(f"keep {name}\n")
    return victim


def assert_intact(victim: Path) -> None:
    names = sorted(p.name for p in victim.iterdir())
    assert names == sorted(["stop", "save", "preview", "notes.txt", "model.safetensors", ".x.abc.tmp"])
    for p in victim.iterdir():
        assert p.read_text() == f"keep {p.name}\n"


def test_command_box_never_deletes_through_a_commands_link(tmp_path):
    victim = victim_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.COMMANDS).symlink_to(victim)
    box = runs.CommandBox(run)
    taken = box.take()
    assert taken == []  # the link's target holds no command of ours
    assert_intact(victim)
    # The link is moved aside (nothing deleted); a real folder takes its place, so commands keep working.
    assert (run / runs.COMMANDS).is_dir() and not (run / runs.COMMANDS).is_symlink()
    moved = [p for p in run.iterdir() if p.name.startswith(runs.COMMANDS + ".") and p.is_symlink()]
    assert len(moved) == 1 and os.readlink(moved[0]) == str(victim)
    assert any("link" in w for w in box.warnings), box.warnings
    runs.send_command(run, "stop")
    assert box.take() == ["stop"]
    assert_intact(victim)


def test_command_box_swapped_for_a_link_mid_run(tmp_path):
    victim = victim_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    box = runs.CommandBox(run)
    assert box.take() == []
    (run / runs.COMMANDS).rmdir()
    (run / runs.COMMANDS).symlink_to(victim)
    for _ in range(3):
        assert box.take() == []
    assert_intact(victim)


def test_send_command_never_writes_through_a_link(tmp_path):
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.COMMANDS).symlink_to(victim)
    with pytest.raises(TiwizError, match="link"):
        runs.send_command(run, "stop")
    assert list(victim.iterdir()) == []


def test_start_and_resume_refuse_a_linked_layout_and_delete_nothing(tmp_path):
    victim = victim_folder(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    config = {"model": str(tmp_path / "model"), "data": str(tmp_path / "data"), "name": "x", "steps": 4,
              "device": "cpu", "output": str(tmp_path / "run")}
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.COMMANDS).symlink_to(victim)
    with pytest.raises(TiwizError, match=r"commands.*link"):
        runapi.start_run(config)
    assert_intact(victim)
    # resume of a run stopped before its first checkpoint restarts it: the same refusal.
    (run / runs.CONFIG).write_text(f'model = "{tmp_path / "model"}"\ndata = "{tmp_path / "data"}"\nname = "x"\n'
                                   'steps = 4\ndevice = "cpu"\n')
    with pytest.raises(TiwizError, match=r"commands.*link"):
        runapi.resume_run(run)
    assert_intact(victim)
    assert not (run / runs.LOG).exists()  # nothing was started


@pytest.mark.parametrize("name", [runs.LOG, runs.LOCK, runs.EVENTS, "state", "embeddings"])
def test_start_refuses_any_linked_layout_entry(tmp_path, name):
    victim = victim_folder(tmp_path)
    target = victim / "notes.txt" if name in (runs.LOG, runs.LOCK, runs.EVENTS) else victim
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(target)
    config = {"model": str(tmp_path / "model"), "data": str(tmp_path / "data"), "name": "x", "steps": 4,
              "device": "cpu", "output": str(run), "overwrite": True}
    with pytest.raises(TiwizError, match="link"):
        runapi.start_run(config)
    assert_intact(victim)


def test_worker_lock_never_truncates_a_link_target(tmp_path):
    victim = victim_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.LOCK).symlink_to(victim / "notes.txt")
    with pytest.raises(TiwizError, match="link"):
        runs.acquire_lock(run)
    assert_intact(victim)
    os.link(victim / "notes.txt", tmp_path / "hard")  # a hard link is another name of the same file
    (run / runs.LOCK).unlink()
    os.link(victim / "notes.txt", run / runs.LOCK)
    with pytest.raises(TiwizError, match="link"):
        runs.acquire_lock(run)
    assert_intact(victim)


def test_reserve_file_never_overwrites_a_link_target(tmp_path):
    from core.runs import worker

    victim = victim_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / worker.RESERVE).symlink_to(victim / "model.safetensors")
    reserve = worker._reserve_space(run)
    assert reserve is None
    worker._release_reserve(reserve)
    assert_intact(victim)
    assert (run / worker.RESERVE).is_symlink()  # not ours: left alone
    (run / worker.RESERVE).unlink()
    os.link(victim / "model.safetensors", run / worker.RESERVE)
    assert worker._reserve_space(run) is None
    assert_intact(victim)


def test_stale_temps_are_never_removed_through_a_link(tmp_path):
    victim = victim_folder(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "embeddings").symlink_to(victim)
    (run / ".y.abc.tmp").symlink_to(victim / "notes.txt")
    (run / ".z.abc.tmp").write_text("ours")
    removed = remove_stale_temps(run, ("embeddings", "previews", "state"))
    assert removed == [run / ".z.abc.tmp"]
    assert_intact(victim)
    assert (run / ".y.abc.tmp").is_symlink()


def test_queue_lock_and_log_never_write_through_a_link(tmp_path):
    from core.queue import scheduler
    from core.queue.jobs import default_queue_dir

    victim = victim_folder(tmp_path)
    queue = default_queue_dir(tmp_path / "runs")
    queue.mkdir(parents=True)
    (queue / scheduler.SCHEDULER_LOCK).symlink_to(victim / "notes.txt")
    (queue / scheduler.SCHEDULER_LOG).symlink_to(victim / "model.safetensors")
    with pytest.raises(TiwizError, match="link"):
        scheduler.acquire_scheduler_lock(queue)
    sched = scheduler.Scheduler(queue, scheduler.LocalBackend(None, 1))
    sched.log("a line that must not reach the link's target")
    assert_intact(victim)
