"""core.runs.folder on synthetic run folders: status, lock, liveness, event log reading/following, commands, listing."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs import api as runapi

from core.runs import folder as runs
from core.runs.run_events import Step
from core.errors import TiwizError

ROOT = Path(__file__).resolve().parent.parent


def write_events(run_dir: Path, events: list[dict], tail: bytes = b"") -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / runs.EVENTS, "ab") as fh:
        for e in events:
            fh.write((json.dumps(e) + "\n").encode())
        fh.write(tail)


def steps(a, b, max_steps=100):
    return [Step(time=1.0 + i, step=i, max_steps=max_steps, loss=1.0 / i, lr=0.005).to_json() for i in range(a, b + 1)]


def test_status_roundtrip_is_atomic_json(tmp_path):
    written = runs.write_status(tmp_path, {"pid": 1, "state": "running", "step": 3})
    assert runs.read_status(tmp_path) == written
    assert written["updated"] > 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert runs.read_status(tmp_path / "nowhere") is None


def test_corrupt_status_is_reported_not_crashed_on(tmp_path):
    run = tmp_path / "r1"
    write_events(run, [{"type": "started", "time": 1.0, "step": 0, "max_steps": 100}] + steps(1, 7)
                 + [{"type": "checkpoint", "time": 9.0, "step": 5, "pt": "a", "safetensors": "b"}])
    (run / runs.STATUS).write_text('{"pid": 12, "state": "runn')
    with pytest.raises(TiwizError, match="status.json: corrupt"):
        runs.read_status(run)
    info = runs.inspect_run(run)
    # Damaged, with the reason; the figures still come from the event log.
    assert (info.state, info.step, info.last_checkpoint) == ("damaged", 7, 5)
    assert info.description.startswith("damaged: ") and "status.json: corrupt" in info.description
    assert [r.name for r in runs.list_runs(tmp_path)] == ["r1"]


def test_truncated_last_line_is_skipped_and_reported(tmp_path):
    write_events(tmp_path, steps(1, 3), tail=b'{"type":"step","step":4,"lo')
    events, report = runs.read_events(tmp_path)
    assert [e["step"] for e in events] == [1, 2, 3]
    assert report == {"bad_lines": 0, "truncated_tail": True}
    runs.write_status(tmp_path, {"pid": None, "state": "interrupted", "step": 3})
    info = runs.inspect_run(tmp_path)
    assert info.state == "stopped"  # an older worker's word "interrupted" reads as today's
    assert any("truncated" in p for p in info.problems)
    # A worker appending later first terminates the partial line, so the next event is not glued onto it.
    assert runs.repair_event_log(tmp_path)
    write_events(tmp_path, steps(4, 4))
    events, report = runs.read_events(tmp_path)
    assert [e["step"] for e in events] == [1, 2, 3, 4]
    assert report == {"bad_lines": 1, "truncated_tail": False}


def test_bad_lines_in_the_middle_are_skipped(tmp_path):
    write_events(tmp_path, steps(1, 2))
    with open(tmp_path / runs.EVENTS, "ab") as fh:
        fh.write(b"not json\n[1,2]\n\n")
    write_events(tmp_path, steps(3, 3))
    events, report = runs.read_events(tmp_path)
    assert [e["step"] for e in events] == [1, 2, 3]
    assert report["bad_lines"] == 2


def test_follower_replays_then_follows_partial_writes(tmp_path):
    run = tmp_path / "run"
    write_events(run, steps(1, 1000))
    follower = runapi.follow(run)
    assert [e["step"] for e in follower.poll()] == list(range(1, 1001))
    assert follower.poll() == []
    assert follower.caught_up()
    with open(run / runs.EVENTS, "ab") as fh:  # a line written in two pieces is returned once complete
        fh.write(b'{"type":"step","step":1001,')
        fh.flush()
        assert follower.poll() == []
        assert follower.caught_up()  # a partial line is not a pending event
        fh.write(b'"loss":0.5}\n')
    assert [e["step"] for e in follower.poll()] == [1001]
    assert follower.count == 1001


def test_follower_bounded_polls_return_everything_in_order(tmp_path):
    write_events(tmp_path, steps(1, 5000))
    follower = runapi.Follower(tmp_path, max_bytes_per_poll=4096)
    got = []
    while batch := follower.poll():
        got.extend(e["step"] for e in batch)
    assert got == list(range(1, 5001))


def test_loss_history_drops_steps_superseded_by_a_resume():
    from core.runs.run_state import RunState

    events = ([{"type": "started", "step": 0}] + steps(1, 7) + [{"type": "started", "step": 5, "resumed": True}]
              + steps(6, 9))
    assert [s for s, _ in RunState.fold(events).losses] == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_lock_refuses_a_second_holder_and_is_freed_by_death(tmp_path):
    code = ("import sys,time; from core.runs import folder as runs; runs.acquire_lock(sys.argv[1]); print('locked', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert holder.stdout.readline() == b"locked\n"
        assert runs.lock_is_held(tmp_path)
        with pytest.raises(TiwizError, match=rf"another worker \(pid {holder.pid}\) is already running"):
            runs.acquire_lock(tmp_path, wait_s=0.2)
    finally:
        holder.kill()
        holder.wait()
    assert not runs.lock_is_held(tmp_path)  # the kernel dropped it with the process
    lock = runs.acquire_lock(tmp_path)
    lock.release()


def test_liveness_uses_the_process_cmdline(tmp_path):
    run = tmp_path / "myrun"
    run.mkdir()
    # A live process that is not a worker of this run (pid reuse) does not count as alive.
    runs.write_status(run, {"pid": os.getpid(), "state": "running", "step": 12, "last_checkpoint": 10})
    info = runs.inspect_run(run)
    assert (info.state, info.alive) == ("killed", False)
    assert info.description == "killed at step 12 (last checkpoint 10)"
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "core.runs.worker", str(run)])
    try:
        runs.write_status(run, {"pid": fake.pid, "state": "running", "step": 12, "last_checkpoint": 10})
        assert runs.inspect_run(run).alive
    finally:
        fake.kill()
        fake.wait()
    info = runs.inspect_run(run)
    assert (info.state, info.alive) == ("killed", False)
    runs.write_status(run, {"pid": None, "state": "starting", "step": 0})
    assert runs.inspect_run(run).state == "starting"


def test_commands_are_consumed_once(tmp_path):
    box = runs.CommandBox(tmp_path)
    assert box.take() == []
    runs.send_command(tmp_path, "save")
    runs.send_command(tmp_path, "preview-now")
    (tmp_path / runs.COMMANDS / "bogus").write_text("")
    assert sorted(box.take()) == ["preview", "save"]
    assert box.warnings == [f"ignored 'bogus' in {tmp_path / runs.COMMANDS}: not a command (one of stop, save, "
                            "preview)"]
    assert box.take() == []
    assert list((tmp_path / runs.COMMANDS).iterdir()) == []
    with pytest.raises(TiwizError, match="unknown command"):
        runs.send_command(tmp_path, "explode")


def test_list_runs_and_resolve(tmp_path):
    a, b = tmp_path / "cat-20250101-000000", tmp_path / "dog-20250102-000000"
    write_events(a, [{"type": "started", "time": 5.0, "step": 0, "max_steps": 10}] + steps(1, 10, 10)
                 + [{"type": "finished", "time": 20.0, "step": 10}])
    runs.write_status(a, {"pid": 1, "state": "finished", "step": 10, "max_steps": 10, "last_checkpoint": 10,
                          "last_loss": 0.1})
    b.mkdir()
    (b / runs.CONFIG).write_text('name = "dog"\n')
    (tmp_path / "not-a-run").mkdir()
    listed = runs.list_runs(tmp_path)
    assert [r.name for r in listed] == ["cat-20250101-000000", "dog-20250102-000000"]
    assert (listed[0].state, listed[0].step, listed[0].max_steps, listed[0].last_loss) == ("finished", 10, 10, 0.1)
    assert runs.resolve_run("dog", tmp_path) == b
    assert runs.resolve_run(a) == a
    with pytest.raises(TiwizError, match="not a run folder"):
        runs.resolve_run("fish", tmp_path)
    assert runs.list_runs(tmp_path / "missing") == []


def test_runapi_imports_no_torch():
    code = ("import sys, core.runs.api, core.runs.folder; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_reports_damaged_run_folders_without_crashing(tmp_path):
    broken = tmp_path / "broken-20250101-000000"
    write_events(broken, [{"type": "started", "time": 1.0, "step": 0, "max_steps": 50, "name": "b"}] + steps(1, 9, 50)
                 + [{"type": "checkpoint", "time": 9.5, "step": 8, "pt": "e/b-8.pt", "safetensors": "e/b-8.st"}],
                 tail=b'{"type":"step","step":10,"lo')
    (broken / runs.STATUS).write_bytes(b"\x00\x00garbage")
    listed = cli("runs", "--root", tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "damaged: " in listed.stdout and "status.json: corrupt" in listed.stdout
    assert "9/50" in listed.stdout
    assert "last line is truncated" in listed.stderr
    assert "Traceback" not in listed.stderr
    shown = cli("attach", broken)
    assert shown.returncode == 1  # damaged
    assert "damaged: " in shown.stdout and "status.json: corrupt" in shown.stdout
    assert "9/50" in shown.stdout and "tiwiz resume" not in shown.stdout  # no state/latest.pt to resume from
    assert "Traceback" not in shown.stderr
    as_json = cli("runs", "--root", tmp_path, "--json")
    (row,) = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert (row["state"], row["step"], row["last_checkpoint"], row["alive"]) == ("damaged", 9, 8, False)
    stop = cli("stop", broken)
    assert stop.returncode == 1 and "is not running (damaged: " in stop.stderr
    resume = cli("resume", broken)
    assert resume.returncode == 2 and "nothing to resume" in resume.stderr and "Traceback" not in resume.stderr
    missing = cli("attach", tmp_path / "nope")
    assert missing.returncode == 2 and "not a run folder" in missing.stderr


def test_progress_line_has_the_tqdm_shape():
    from core.cli.progress import progress_line
    from core.runs.run_events import Step, Validation
    from core.runs.run_state import RunState

    state = RunState.fold([Step(step=420, max_steps=1000, it_s=2.21, elapsed=190.0, loss=0.0734, loss_avg=0.0801,
                                lr=0.005)])
    line = progress_line(state)
    assert line == " 42%|████████▍           | 420/1000 [03:10<04:22, 2.21it/s, loss=0.0734, avg=0.0801, lr=5.00e-03]"
    slow = RunState.fold([Step(step=1, max_steps=4, it_s=0.5, elapsed=2.0, loss=1.0, lr=0.1),
                          Validation(step=1, val_loss=0.5)])
    assert progress_line(slow) == " 25%|█████               | 1/4 [00:02<00:06, 2.00s/it, loss=1.0000, val=0.5000, lr=1.00e-01]"
