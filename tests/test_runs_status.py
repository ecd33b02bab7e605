"""status.json as a typed record (issue 21): the worker writes its status from the one reducer's state, RunInfo is that
record plus liveness, older files still read, a wrongly typed field is a reported problem, and the queue's worker gets
its environment as a parameter."""

import json
import os

import pytest

from core.runs import api as runapi
from core.runs import folder as runs
from core.runs import run_events as ev
from core.runs.run_state import RunState
from core.runs.status import RunStatus
from core.runs.vocab import EndReason, RunPhase

EVENTS = [ev.Started(step=0, max_steps=10, name="zxq"), *[ev.Step(step=i, max_steps=10, loss=1.0 / i) for i in
                                                             range(1, 5)],
          ev.Checkpoint(step=4), ev.Validation(step=4, val_loss=0.5, best_step=4, best_basis="validation"),
          ev.Compile(mode="eager", reason="cpu"), ev.Step(step=5, max_steps=10, loss=0.2),
          ev.Finished(step=5, reason=EndReason.AUTO_STOP, message="auto-stop: flat", best_step=4,
                      best_checkpoint="embeddings/zxq-4.safetensors", best_basis="validation")]


def test_the_worker_writes_the_reducers_state(tmp_path):
    from core.runs.worker import StatusTracker

    tracker = StatusTracker(tmp_path, resume=False)
    try:
        for event in EVENTS:
            tracker.on_event(event)
        tracker.flush()
        live = runs.read_status(tmp_path)
        assert live["state"] == "running"  # over for viewers only once the log's last word is written
        tracker.end(ev.Exit(state=RunPhase.FINISHED, step=5))
    finally:
        tracker.close()
    written = runs.read_status(tmp_path)
    expected = RunStatus.from_state(RunState.fold(EVENTS + [ev.Exit(state=RunPhase.FINISHED, step=5)])).to_json()
    meta = {"pid", "host", "started", "updated", "resumed"}
    assert {k: v for k, v in written.items() if k not in meta} == {k: v for k, v in expected.items() if k not in meta}
    assert (written["state"], written["step"], written["last_checkpoint"], written["last_loss"]) == \
        ("finished", 5, 4, 0.2)
    assert (written["best_step"], written["best_checkpoint"], written["compile"], written["reason"]) == \
        (4, "embeddings/zxq-4.safetensors", "eager", "auto-stop: flat")
    assert written["pid"] == os.getpid()


def test_a_resumed_life_keeps_the_runs_checkpoint_and_best_step(tmp_path):
    from core.runs.worker import StatusTracker

    with open(tmp_path / runs.EVENTS, "w") as fh:
        for event in EVENTS[:7]:  # killed at step 4 after its checkpoint and validation
            fh.write(event.to_line() + "\n")
    tracker = StatusTracker(tmp_path, resume=True)
    tracker.close()
    status = runs.read_status(tmp_path)
    assert (status["state"], status["step"], status["last_checkpoint"], status["best_step"], status["name"]) == \
        ("running", 4, 4, 4, "zxq")


def test_run_info_is_the_status_record_plus_liveness(tmp_path):
    runs.write_status(tmp_path, RunStatus(state=RunPhase.STOPPED, name="zxq", step=12, last_checkpoint=10))
    info = runs.inspect_run(tmp_path)
    assert isinstance(info, RunStatus) and (info.alive, info.state, info.step) == (False, "stopped", 12)
    assert not hasattr(info, "phase") and not hasattr(info, "loss")  # one name per field


def test_older_and_damaged_status_files_still_read(tmp_path):
    (tmp_path / runs.STATUS).write_text(json.dumps({"state": "interrupted", "error": "SIGTERM received", "step": 7,
                                                    "last_checkpoint": "ten", "future_field": [1]}))
    info = runs.inspect_run(tmp_path)
    assert (info.state, info.reason, info.step, info.last_checkpoint) == ("stopped", "SIGTERM received", 7, None)
    assert any("'last_checkpoint' is str 'ten'" in p for p in info.problems), info.problems
    record, problems = RunStatus.parse({"phase": "done", "step": True})
    assert (record.state, record.step) == (RunPhase.FINISHED, 0) and len(problems) == 1


def test_the_worker_gets_its_environment_as_a_parameter(tmp_path):
    """The queue pins a worker to a GPU by CUDA_VISIBLE_DEVICES in the worker's environment, never by changing this
    process's (other threads spawn too)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "data").mkdir()
    before = dict(os.environ)
    spawned = []
    runapi.start_run({"model": str(tmp_path / "model"), "data": str(tmp_path / "data"), "name": "x", "steps": 4,
                      "device": "cpu", "output": str(tmp_path / "run")}, spawned=spawned,
                     env={"CUDA_VISIBLE_DEVICES": "7"})
    try:
        environ = (f"/proc/{spawned[0]}/environ")
        seen = open(environ, "rb").read().split(b"\0") if os.path.exists(environ) else None
    finally:
        runapi.stop_run(tmp_path / "run", timeout=60)
    assert dict(os.environ) == before
    if seen is None:
        pytest.skip("no /proc here")
    assert b"CUDA_VISIBLE_DEVICES=7" in seen
