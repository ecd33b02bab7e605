"""Shared pieces of the queue tests: a 4-job manifest on the tiny model, reference embeddings from uninterrupted
in-process runs (computed once per session), the CLI as a subprocess, and a watcher that counts live workers per run
folder from /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from train_helpers import make_images

ROOT = Path(__file__).resolve().parent.parent
SAFETY_S = 300  # only a guard against hanging forever; nothing asserts on timing
STEPS, SAVE_EVERY = 24, 4
BASE = dict(steps=STEPS, width=64, height=64, save_every=SAVE_EVERY, preview_every=0, validate_every=0, lr="0.01",
            device="cpu")
JOBS = {
    "ja": dict(seed=1, init_text="cat"),
    "jb": dict(seed=2, init_text="dog"),
    "jc": dict(seed=3, init_text="red thing", vectors=2),
    "jd": dict(seed=4, init_text="*", lr="0.02"),
}
_REFERENCES: dict[tuple, dict] = {}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_manifest(path: Path, model: Path, data: Path, jobs: dict = JOBS) -> Path:
    lines = [f"model = {toml_value(str(model))}"] + [f"{k} = {toml_value(v)}" for k, v in BASE.items()]
    for name, overrides in jobs.items():
        lines += ["", "[[job]]", f"name = {toml_value(name)}", f"data = {toml_value(str(data))}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def shared_data(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp() / "queue-data"
    if not base.is_dir():
        make_images(base, n=2)
    return base


def references(model: Path, data: Path, work: Path) -> dict:
    """name -> final vectors of the uninterrupted run with the job's settings (same seed), trained in this process
    once per session (the model loads fast; no worker start-up)."""
    import torch

    from core.events import ListSink
    from core.training.config import TrainConfig
    from core.training.trainer import Trainer

    key = (str(model), str(data))
    if key not in _REFERENCES:
        out = {}
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name, overrides in JOBS.items():
                config = TrainConfig.from_dict({**BASE, **overrides, "model": str(model), "data": str(data),
                                                "name": name, "output": str(work / name)})
                Trainer(config, work / name, ListSink()).run()
                out[name] = load_vectors(work / name / f"{name}.safetensors")
        finally:
            torch.set_num_threads(before)
        _REFERENCES[key] = out
    return _REFERENCES[key]


def load_vectors(path: Path):
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    assert len(tensors) == 1
    return next(iter(tensors.values())).float()


def cli(*args, env: dict | None = None, timeout: float = SAFETY_S) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def wait_for(predicate, what: str, timeout: float = SAFETY_S, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"gave up waiting for {what}")


def live_workers(under: Path) -> dict[str, list[int]]:
    """run folder -> pids of live `core.runs.worker` processes (zombies have an empty cmdline)."""
    found: dict[str, list[int]] = {}
    prefix = str(under)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "core.runs.worker" in args:
            for arg in args:
                if arg.startswith(prefix):
                    found.setdefault(arg, []).append(int(proc.name))
    return found


class WorkerWatch:
    """Samples /proc in a thread: the most live workers any one run folder had at once."""

    def __init__(self, under: Path, interval: float = 0.1) -> None:
        self.under = under
        self.interval = interval
        self.max_per_run: dict[str, int] = {}
        self.pids: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "WorkerWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for run, pids in live_workers(self.under).items():
                self.max_per_run[run] = max(self.max_per_run.get(run, 0), len(pids))
                self.pids.setdefault(run, set()).update(pids)
            self._stop.wait(self.interval)


def assert_one_worker_at_a_time(run_dir: Path, lives: int) -> None:
    """The run's own record: each life took the run lock (its `tiwiz worker: pid` line), no worker was refused the
    lock (`another worker ... is already running`), and the log's lives follow each other: every `started` event
    continues from a checkpoint of the life before, and the loss history has each step exactly once."""
    from core.runs import folder as runs
    from core.runs.run_state import RunState

    log = (run_dir / runs.LOG).read_text(errors="replace")
    assert "another worker" not in log, log[-2000:]
    assert log.count("tiwiz worker: pid ") == lives, log[-2000:]
    events, report = runs.read_events(run_dir)
    started = [e for e in events if e["type"] == "started"]
    assert len(started) == lives
    assert started[0]["step"] == 0 and not started[0]["resumed"]
    checkpoints = {e["step"] for e in events if e["type"] == "checkpoint"}
    for later in started[1:]:
        assert later["resumed"] and later["step"] in checkpoints
    assert [step for step, _ in RunState.fold(events).losses] == list(range(1, STEPS + 1))


@pytest.fixture
def setup(tmp_path):
    model = tmp_path / "model"
    model.mkdir()  # `add` checks that paths exist; nothing here loads the model
    data = make_images(tmp_path / "data", n=1)
    root = tmp_path / "runs"
    return model, data, root, {"TIWIZ_RUNS_DIR": str(root)}


def write_config(path, **values):
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path
