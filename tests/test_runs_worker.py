"""Real detached workers on the tiny model (CPU, 64 px): kill -9 + exact resume, viewers dying, commands, the lock,
graceful stop, and a failing checkpoint write."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.runs import api as runapi

from core.runs import folder as runs
from core.runs.run_events import Checkpoint, Exit, RunPhase, Step
from core.runs.run_state import RunState
from train_helpers import make_images, tiny_config

ROOT = Path(__file__).resolve().parent.parent
SAFETY_S = 240  # only a guard against hanging forever; no test asserts on timing


def next_events(follower, until, what: str):
    """Poll until `until(event)` is true for an event; returns the events read so far (including that one)."""
    deadline = time.monotonic() + SAFETY_S
    seen = []
    while time.monotonic() < deadline:
        for event in follower.poll():
            seen.append(event)
            if until(event):
                return seen
        if follower.done():
            seen.extend(follower.poll())
            raise AssertionError(f"run ended before {what}: {seen[-3:]}\n{worker_log(follower.run_dir)}")
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def wait_done(run_dir: Path) -> runs.RunInfo:
    deadline = time.monotonic() + SAFETY_S
    while time.monotonic() < deadline:
        info = runs.inspect_run(run_dir)
        if not info.alive:
            return info
        time.sleep(0.1)
    raise AssertionError(f"{run_dir} still running")


def worker_log(run_dir: Path) -> str:
    try:
        return (run_dir / runs.LOG).read_text()[-3000:]
    except OSError:
        return ""


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "core.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=SAFETY_S, stdin=subprocess.DEVNULL, **kw)


def load_vectors(path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert len(tensors) == 1
    return next(iter(tensors.values())).float()


def _default_hangup() -> None:
    """A viewer gets the default SIGHUP disposition, as in a real terminal, even when the suite runs under nohup."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def attach_in_terminal_and_interrupt(run: Path, answer: bytes) -> str:
    """Run `tiwiz attach RUN` on a pseudo-terminal, press Ctrl-C once it shows the run, then type `answer`."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: become the viewer
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "core.cli", "attach", str(run)])
    out = b""

    def read_until(marker: bytes) -> None:
        nonlocal out
        deadline = time.monotonic() + SAFETY_S
        while marker not in out and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    return

    try:
        read_until(b"started at step")
        os.write(fd, b"\x03")
        read_until(b"[D/s]")
        os.write(fd, answer)
        read_until(b"Reattach with")
        deadline = time.monotonic() + SAFETY_S
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if waited[0] == 0:  # never hang the suite: kill the viewer and fail with what it printed
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the attached viewer did not detach:\n" + out.decode(errors="replace"))
        assert os.waitstatus_to_exitcode(waited[1]) == 0, out.decode(errors="replace")
    finally:
        os.close(fd)
    return out.decode(errors="replace")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("runs-data") / "data", n=4)


def test_kill9_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model_dir, data_dir):
    import torch

    from core.events import ListSink
    from core.training.trainer import Trainer

    settings = dict(steps=24, save_every=3, validate_every=0, lr="0.02:6, 0.005", seed=11)
    run = runapi.start_run(tiny_config(tiny_model_dir, data_dir, output=str(tmp_path / "killed"), **settings))
    assert run == (tmp_path / "killed").resolve()
    kill_at = random.Random().randint(4, 12)  # any step after the first checkpoint (step 3)
    follower = runapi.follow(run)
    seen = next_events(follower, lambda e: e["type"] == "step" and e["step"] >= kill_at, f"step {kill_at}")
    assert any(e["type"] == "checkpoint" for e in seen)
    pid = runs.read_status(run)["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = wait_done(run)
    assert killed.state == "killed", killed
    assert killed.step < 24 and killed.last_checkpoint % 3 == 0 and killed.last_checkpoint >= 3
    assert killed.description == f"killed at step {killed.step} (last checkpoint {killed.last_checkpoint})"
    assert not (run / "tcat.safetensors").exists()

    # The reference: the same config, uninterrupted, in this process (meanwhile nothing else runs).
    reference = ListSink()
    Trainer(tiny_config(tiny_model_dir, data_dir, output=str(tmp_path / "ref"), **settings), tmp_path / "ref",
            reference).run()

    # Resume; SIGTERM (a pod shutdown) stops it gracefully with a save; resume again to the end.
    assert runapi.resume_run(run) == run
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "started" and e.get("resumed"), "the resumed start")
    os.kill(runs.read_status(run)["pid"], signal.SIGTERM)
    terminated = wait_done(run)
    assert (terminated.state, terminated.reason) == ("stopped", "SIGTERM received"), worker_log(run)
    assert terminated.last_checkpoint == terminated.step < 24
    runapi.resume_run(run)
    info = wait_done(run)
    assert info.state == "finished", worker_log(run)
    assert info.step == 24
    assert torch.allclose(load_vectors(run / "tcat.safetensors"), load_vectors(tmp_path / "ref" / "tcat.safetensors"),
                          atol=1e-5, rtol=0)
    # The loss history continues: one step event per step on the current timeline, equal to the reference.
    events, report = runs.read_events(run)
    history = RunState.fold(events).losses
    assert [step for step, _ in history] == list(range(1, 25))
    ref_losses = [e.loss for e in reference.typed() if isinstance(e, Step)]
    assert [loss for _, loss in history] == pytest.approx(ref_losses, abs=1e-5)
    started = [e for e in events if e["type"] == "started"]
    assert [e["resumed"] for e in started] == [False, True, True]
    assert [e["step"] for e in started] == [0, killed.last_checkpoint, terminated.step]
    assert [e["reason"] for e in events if e["type"] == "stopped"] == ["interrupted"]
    # A finished run resumes only to a higher step count.
    with pytest.raises(runs.TiwizError, match="finished all 24 steps"):
        runapi.resume_run(run)


def test_live_run_survives_viewers_and_obeys_commands(tmp_path, tiny_model_dir, data_dir):
    started = cli("train", "--model", tiny_model_dir, "--data", data_dir, "--name", "tcat", "--steps", 100000,
                  "--width", 64, "--height", 64, "--save-every", 0, "--preview-every", 0, "--validate-every", 0,
                  "--preview-steps", 2, "--device", "cpu", "--detach", env={**os.environ, "TIWIZ_RUNS_DIR":
                                                                             str(tmp_path / "runs")})
    assert started.returncode == 0, started.stderr
    run = Path(started.stdout.splitlines()[-1])  # the run folder is the last line
    assert run.parent == (tmp_path / "runs").resolve() and run.name.startswith("tcat-")
    follower = runapi.follow(run)
    next_events(follower, lambda e: e["type"] == "step", "the first step")
    worker_pid = runs.read_status(run)["pid"]

    # Ctrl-C in an attached terminal asks; no answer (EOF) detaches, and the worker goes on.
    transcript = attach_in_terminal_and_interrupt(run, answer=b"\x04")
    assert "Detach (training continues) or stop & save? [D/s]" in transcript
    assert f"detached; training continues (pid {worker_pid})" in transcript
    assert runs.pid_is_worker(worker_pid, run)

    # A second worker on the same folder is refused, and touches nothing.
    second = subprocess.run([sys.executable, "-m", "core.runs.worker", str(run)], capture_output=True, text=True,
                            cwd=ROOT, timeout=SAFETY_S)
    assert second.returncode == 3
    assert f"another worker (pid {worker_pid}) is already running in {run}" in second.stderr
    assert runs.read_status(run)["pid"] == worker_pid

    # Viewers die by SIGHUP (an SSH drop) and SIGKILL; the worker keeps training.
    for sig in (signal.SIGHUP, signal.SIGKILL):
        out_path = tmp_path / f"viewer-{sig.name}.txt"
        with open(out_path, "w") as out:
            viewer = subprocess.Popen([sys.executable, "-m", "core.cli", "attach", str(run)], stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                      start_new_session=True, preexec_fn=_default_hangup)
        deadline = time.monotonic() + SAFETY_S
        while "history:" not in out_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "history:" in out_path.read_text()
        os.killpg(viewer.pid, sig)
        assert viewer.wait(timeout=SAFETY_S) == -sig
        before = runs.inspect_run(run).step
        next_events(follower, lambda e: e["type"] == "step" and e["step"] >= before + 2, "steps after the viewer died")
        assert runs.pid_is_worker(worker_pid, run)
    os.kill(worker_pid, signal.SIGHUP)  # the worker itself ignores hang-ups
    before = runs.inspect_run(run).step
    next_events(follower, lambda e: e["type"] == "step" and e["step"] >= before + 2, "steps after a SIGHUP")
    assert runs.pid_is_worker(worker_pid, run)

    # save now / preview now through commands/.
    runs.send_command(run, "save")
    (ckpt,) = [e for e in next_events(follower, lambda e: e["type"] == "checkpoint", "the checkpoint")
               if e["type"] == "checkpoint"]
    assert load_vectors(run / ckpt["safetensors"]).shape[0] == 1
    # status.json follows the log (written off the training thread, so a moment later)
    deadline = time.monotonic() + SAFETY_S
    while runs.inspect_run(run).last_checkpoint != ckpt["step"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs.inspect_run(run).last_checkpoint == ckpt["step"]
    runs.send_command(run, "preview")
    (preview,) = [e for e in next_events(follower, lambda e: e["type"] == "preview", "the preview")
                  if e["type"] == "preview"]
    assert (run / preview["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run / runs.COMMANDS).iterdir()) == []

    # tiwiz stop: graceful, saves, reports.
    stopped = cli("stop", run, "--timeout", SAFETY_S)
    assert stopped.returncode == 0, stopped.stderr
    info = runs.inspect_run(run)
    assert (info.state, info.alive) == ("stopped", False)
    assert f"stopped at step {info.step} (stop requested)" in stopped.stdout
    assert (run / "tcat.safetensors").is_file() and (run / runs.STATE).is_file()

    # A new viewer sees the whole history.
    replay = cli("attach", run, "--json")
    assert replay.returncode == 0, replay.stderr
    events = [json.loads(line) for line in replay.stdout.splitlines()]
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, info.step + 1))
    assert [e["type"] for e in events[-2:]] == ["stopped", "exit"]
    assert [e for e in events if e["type"] == "checkpoint"][-1]["step"] == info.step  # saved before stopping
    assert events[-1]["state"] == "stopped"
    text = cli("attach", run)
    assert text.returncode == 0
    assert f"{info.step}/100000" in text.stdout and "stopped at step" in text.stdout
    assert f"tiwiz resume {run}" in text.stdout


def test_failed_checkpoint_write_ends_failed_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, data_dir):
    from core.training.resume_state import load_state

    run = tmp_path / "run"
    (run / "embeddings" / "tcat-6.pt").mkdir(parents=True)  # the step-6 checkpoint cannot be written
    runapi.start_run(tiny_config(tiny_model_dir, data_dir, steps=10, save_every=3, output=str(run)))
    info = wait_done(run)
    assert info.state == "failed", worker_log(run)
    assert "tcat-6.pt is a folder" in info.reason
    assert "the last good checkpoint, step 3, is intact" in info.reason
    log = worker_log(run)
    assert "Traceback" in log and "tiwiz worker: failed: " in log
    events, _ = runs.read_events(run)
    assert [e["type"] for e in events[-2:]] == ["error", "exit"]
    assert load_vectors(run / "embeddings" / "tcat-3.safetensors").shape[0] == 1
    assert load_state(run / runs.STATE)["step"] == 3
    assert not [p for p in (run / "embeddings").iterdir() if p.name.endswith(".tmp")]
    listed = cli("runs", "--root", tmp_path)
    assert listed.returncode == 0
    assert "failed at step 6: " in listed.stdout and "is a folder" in listed.stdout


def test_write_errors_become_clear_messages(tmp_path):
    import errno

    from core.runs.worker import StatusTracker, describe_failure

    run = tmp_path / "run"
    run.mkdir()
    tracker = StatusTracker(run, resume=False)
    assert runs.read_status(run)["pid"] == os.getpid()
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "state" / ".latest.pt.x.tmp"))
    assert describe_failure(full, tracker) == f"cannot write {run}/state/.latest.pt.x.tmp: the disk is full"
    (run / "state").mkdir()
    (run / runs.STATE).write_bytes(b"x")
    tracker.on_event(Checkpoint(step=40))
    tracker.flush()
    try:
        open(run / runs.STATE / "inside", "w")
    except OSError as exc:  # a real ENOTDIR from the file system
        message = describe_failure(exc, tracker)
    assert message.startswith(f"Not a directory: {run}/state/latest.pt/inside (the last good checkpoint, step 40")
    assert runs.read_status(run)["last_checkpoint"] == 40
    tracker.end(Exit(state=RunPhase.FAILED, step=40, reason=message))
    assert runs.read_status(run)["state"] == "failed"
    tracker.close()


def test_junk_in_commands_never_stops_the_training(tmp_path, tiny_model_dir, data_dir):
    """A sub-folder in commands/, then commands/ replaced by a plain file: the worker warns, recreates the folder and
    trains on, before its first checkpoint; a stop sent afterwards still works (issue 13, item 3)."""
    import shutil

    run = runapi.start_run(tiny_config(tiny_model_dir, data_dir, steps=100000, output=str(tmp_path / "run")))
    follower = runapi.follow(run)
    box = run / runs.COMMANDS
    next_events(follower, lambda e: e["type"] == "step", "the first step")
    (box / "junk-folder").mkdir()
    (box / "junk-folder" / "stop").write_text("")  # a command name inside the folder is still not a command
    seen = next_events(follower, lambda e: e["type"] == "warning" and "junk-folder" in e["message"], "the warning")
    step = max(e["step"] for e in seen if e["type"] == "step")
    shutil.rmtree(box)
    box.write_text("not a folder")
    next_events(follower, lambda e: e["type"] == "warning" and "was not a folder" in e["message"], "the 2nd warning")
    next_events(follower, lambda e: e["type"] == "step" and e["step"] >= step + 2, "steps after the junk")
    assert box.is_dir() and runs.inspect_run(run).state == "running"
    assert not any(e["type"] == "checkpoint" for e in runs.read_events(run)[0])  # all before the first checkpoint
    runs.send_command(run, "stop")
    info = wait_done(run)
    assert (info.state, info.reason) == ("stopped", "stop requested"), worker_log(run)
    assert (run / runs.STATE).is_file() and (run / "tcat.safetensors").is_file()
