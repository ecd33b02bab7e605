"""The run contract (core.runs.run_events) and the one reducer (core.runs.run_state): every event round-trips through
JSON, older logs parse, wrong types are skipped with a warning (never an exception), and the fold handles resumes and
out-of-order previews. Plus the damaged-folder listing, `tiwiz runs` at 80 columns, and config.toml's vector count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from dataclasses import fields
from enum import Enum
from pathlib import Path

import pytest

from core.runs import folder as runs
from core.runs import run_events as ev
from core.runs.run_events import Command, RunPhase
from core.runs.run_state import RunState

ROOT = Path(__file__).resolve().parent.parent


def _sample(hint, name: str):
    """A non-default value of a field's type."""
    args = typing.get_args(hint)
    if type(None) in args:
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if origin is bool:
        return True
    if origin is int:
        return 7
    if origin is float:
        return 0.25
    if origin is str:
        return "bf16" if name == "precision" else f"some {name}"
    if origin is list:
        return [1.0, 2.0]
    if origin is dict:
        return {"k": 1}
    if isinstance(origin, type) and issubclass(origin, Enum):
        return list(origin)[3]
    raise AssertionError(f"no sample for {hint}")


def sample_event(cls):
    hints = typing.get_type_hints(cls)
    values = {f.name: _sample(hints[f.name], f.name) for f in fields(cls) if f.name not in ("skipped",)}
    return cls(**values)


@pytest.mark.parametrize("kind", sorted(ev.EVENT_TYPES))
def test_every_event_round_trips_through_json(kind):
    event = sample_event(ev.EVENT_TYPES[kind])
    line = event.to_line()
    data = json.loads(line)
    assert data["type"] == kind and list(data)[0] == "type"
    assert ev.parse(line) == event
    assert ev.parse(data) == event
    assert ev.parse(line.encode()) == event
    # Optional fields left at None are left out of the line, and come back as None.
    bare = ev.EVENT_TYPES[kind](**{f.name: getattr(event, f.name) for f in fields(event)
                                   if f.default is not None and f.name != "skipped"})
    assert None not in bare.to_json().values()
    assert ev.parse(bare.to_json()) == bare


def test_the_reference_lists_every_event_with_help():
    described = {d["type"]: d for d in ev.describe_event_types()}
    assert set(described) == set(ev.EVENT_TYPES) >= {"started", "step", "validation", "checkpoint", "preview",
                                                     "warning", "error", "stopping", "stopped", "finished", "exit"}
    for d in described.values():
        assert d["doc"] and all(f["help"] for f in d["fields"]), d
    step = {f["name"]: f for f in described["step"]["fields"]}
    assert step["step"]["required"] and step["loss"]["type"] == "float | null"


def test_older_names_parse():
    started = ev.parse({"type": "started", "time": 1.0, "step": 0, "max_steps": 10, "dtype": "bfloat16"})
    assert started == ev.Started(time=1.0, max_steps=10, precision="bf16")
    assert ev.parse({"type": "started", "dtype": "float16"}).precision == "fp16"
    assert ev.parse({"type": "started", "precision": "float32"}).precision == "fp32"
    assert isinstance(ev.parse({"type": "interrupted", "step": 3}), ev.Stopped)
    assert ev.parse({"type": "exit", "state": "interrupted", "step": 3}).state is RunPhase.STOPPED
    for word in ("interrupted", "stop", "stopped"):
        assert RunPhase.parse(word) is RunPhase.STOPPED
    assert RunPhase.parse("waiting") is RunPhase.STARTING and RunPhase.parse(None) is RunPhase.UNKNOWN
    assert Command.parse("save-now") is Command.SAVE and Command.parse("preview-now") is Command.PREVIEW
    assert Command.parse("explode") is None
    # The phase is its word: in comparisons, dict keys and JSON.
    assert RunPhase.STOPPED == "stopped" and {"stopped": 1}[RunPhase.STOPPED] == 1
    assert json.dumps({"state": RunPhase.STOPPED}) == '{"state": "stopped"}'


def test_unknown_fields_are_ignored_and_unknown_types_dropped():
    step = ev.parse({"type": "step", "time": 5.0, "step": 2, "future_field": [1, 2]})
    assert step == ev.Step(time=5.0, step=2)
    assert ev.parse({"type": "telemetry", "x": 1}) is None
    assert ev.parse_all([{"type": "telemetry"}, {"type": "step", "time": 1.0, "step": 1}]) == [
        ev.Step(time=1.0, step=1)]


@pytest.mark.parametrize("bad", [
    {"type": "step", "step": "12"}, {"type": "step", "step": 1, "loss": "0.1"}, {"type": "step", "step": True},
    {"type": "step"}, {"type": "checkpoint", "step": 3, "pt": ["a"]}, {"type": "started", "resumed": "yes"},
    {"type": "warning", "message": {"nested": 1}}, {"type": "exit", "state": "exploded"},
    {"type": "step", "step": 1, "time": "now"}, {"type": 5}, [1, 2], "not json", "[" * 100_000,
])
def test_wrong_types_become_a_skip_warning_never_an_exception(bad):
    event = ev.parse(bad if not isinstance(bad, str) else bad)
    assert isinstance(event, ev.Warning) and event.skipped and event.message.startswith("skipped")
    state = RunState()
    state.apply(bad)
    assert state.skipped == 1 and state.warnings == [event.message]


def test_a_skip_names_the_field_and_the_step():
    event = ev.parse({"type": "step", "step": 4, "loss": "0.1"})
    assert event.message == "skipped a 'step' event at step 4: 'loss' is str '0.1', not a number or null"
    assert event.skipped == "step"
    # A `skipped` marker in a file is not taken from it.
    assert ev.parse({"type": "warning", "message": "x", "skipped": "step"}).skipped is None


def _steps(a, b, max_steps=100):
    return [ev.Step(time=float(i), step=i, max_steps=max_steps, loss=1.0 / i, lr=0.01) for i in range(a, b + 1)]


def test_reducer_truncates_history_on_a_resume_from_an_earlier_checkpoint():
    events = ([ev.Started(step=0, max_steps=100, name="cat"), ev.Validation(step=0, val_loss=0.5)] + _steps(1, 7)
              + [ev.Checkpoint(step=5, pt="a.pt", safetensors="a.st"), ev.Validation(step=6, val_loss=0.4)]
              + [ev.Started(step=5, max_steps=100, name="cat", resumed=True)] + _steps(6, 9))
    state = RunState.fold(events)
    assert [s for s, _ in state.losses] == list(range(1, 10))
    assert [s for s, _ in state.smoothed] == list(range(1, 10))
    assert state.val_losses == [(0, 0.5)]
    assert (state.phase, state.step, state.last_checkpoint, state.resumed) == (RunPhase.RUNNING, 9, 5, True)
    # The same fold from the JSON dicts of the log.
    assert RunState.fold([e.to_json() for e in events]).losses == state.losses


def test_reducer_marks_a_checkpoint_whose_preview_comes_after_it():
    state = RunState.fold([ev.Started(max_steps=10), ev.Checkpoint(step=4, pt="p", safetensors="s"),
                           ev.Checkpoint(step=8, pt="p", safetensors="s")])
    assert [c.preview for c in state.checkpoints] == ["", ""]
    state.apply(ev.Preview(step=4, path="previews/x-4.png"))
    assert [c.preview for c in state.checkpoints] == ["previews/x-4.png", ""]
    # ... and a preview before its checkpoint too.
    state.apply(ev.Preview(step=12, path="previews/x-12.png"))
    state.apply(ev.Checkpoint(step=12, pt="p", safetensors="s"))
    assert state.checkpoints[-1].preview == "previews/x-12.png" and state.latest_preview == (12, "previews/x-12.png")


def test_reducer_phases_and_reasons():
    state = RunState.fold(_steps(1, 3) + [ev.Stopping(step=3, reason="stop requested")])
    assert state.phase is RunPhase.STOPPING
    state.apply(ev.Stopped(step=3, reason="stop", pt="x.pt", safetensors="x.st"))
    state.apply(ev.Exit(state=RunPhase.STOPPED, step=3, reason="stop requested"))
    assert (state.phase, state.reason, state.final_safetensors) == (RunPhase.STOPPED, "stop requested", "x.st")
    failed = RunState.fold(_steps(1, 2) + [ev.Error(message="disk full"),
                                           ev.Exit(state=RunPhase.FAILED, step=2, reason="disk full")])
    assert (failed.phase, failed.error) == (RunPhase.FAILED, "disk full")
    killed = RunState.fold(_steps(1, 2))
    assert killed.set_liveness("killed") and killed.phase is RunPhase.KILLED and "step 2" in killed.error


def test_listing_shows_each_damaged_run_in_its_own_row(tmp_path):
    good = tmp_path / "good-20250101-000000"
    good.mkdir()
    (good / runs.EVENTS).write_text("".join(e.to_line() + "\n" for e in [ev.Started(max_steps=5)] + _steps(1, 5, 5)
                                            + [ev.Finished(step=5)]))
    runs.write_status(good, {"pid": 1, "state": "finished", "step": 5, "max_steps": 5})
    latin = tmp_path / "latin-20250101-000000"
    latin.mkdir()
    (latin / runs.STATUS).write_bytes(b'{"state": "running", "name": "caf\xe9"}')
    (latin / runs.EVENTS).write_text("".join(e.to_line() + "\n" for e in [ev.Started(max_steps=50)] + _steps(1, 3, 50)))
    deep = tmp_path / "deep-20250101-000000"
    deep.mkdir()
    (deep / runs.EVENTS).write_text(ev.Started(max_steps=9).to_line() + "\n" + "[" * 200_000 + "\n"
                                    + ev.Step(step=1, max_steps=9, loss=0.5).to_line() + "\n")
    typed = tmp_path / "typed-20250101-000000"
    typed.mkdir()
    (typed / runs.EVENTS).write_text(ev.Started(max_steps=9).to_line() + "\n"
                                     + json.dumps({"type": "step", "step": "two", "loss": [1]}) + "\n"
                                     + ev.Step(step=3, max_steps=9, loss=0.5).to_line() + "\n")
    listed = subprocess.run([sys.executable, "-m", "core.cli", "runs", "--root", str(tmp_path)], capture_output=True,
                            text=True, cwd=ROOT, timeout=120, env={**os.environ, "COLUMNS": "80"})
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    lines = listed.stdout.splitlines()
    row = {line.split()[0]: i for i, line in enumerate(lines) if line and not line.startswith(" ")}
    assert set(row) == {"NAME", good.name, latin.name, deep.name, typed.name}
    assert lines[row[latin.name]].split()[1] == "damaged" and "3/50" in lines[row[latin.name]]
    assert "status.json: corrupt (not UTF-8 text)" in lines[row[latin.name] + 1]
    assert lines[row[good.name]].split()[1] == "finished"
    assert lines[row[deep.name]].split()[1] == "killed" and "1/9" in lines[row[deep.name]]
    assert lines[row[typed.name]].split()[1] == "killed" and "3/9" in lines[row[typed.name]]
    assert "skipped 1 event(s) with fields of the wrong type" in listed.stderr
    # attach skips the bad events with a warning, in the one place that parses them.
    shown = subprocess.run([sys.executable, "-m", "core.cli", "attach", str(typed), "--no-follow"], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert "Traceback" not in shown.stderr, shown.stderr
    assert "warning: skipped a 'step' event: 'step' is str 'two', not an integer" in shown.stdout
    assert "3/9" in shown.stdout


def test_runs_table_keeps_a_long_reason_off_the_columns(tmp_path, monkeypatch):
    from core.cli.runs import runs_table

    monkeypatch.setenv("COLUMNS", "80")
    run = tmp_path / "cat-20250101-000000"
    run.mkdir()
    reason = "cannot write " + "/very/long/path" * 12 + "/state/latest.pt: the disk is full\x1b[2J"
    runs.write_status(run, {"pid": None, "state": "failed", "step": 6, "max_steps": 1000, "reason": reason})
    found = runs.list_runs(tmp_path)
    rows = runs_table(found, tty=True)
    assert rows[1].split()[:3] == [run.name, "failed", "6/1000"]
    assert all(len(line) <= 80 for line in rows), rows
    assert rows[2].startswith("  failed at step 6: cannot write /very") and rows[2].endswith("…")
    piped = runs_table(found, tty=False)
    assert piped[2].endswith("the disk is full\\x1b[2J") and len(piped[1]) <= 80  # whole, escapes shown


def test_config_toml_records_the_vectors_trained_and_the_callers_config_is_untouched(tmp_path, tiny_model_dir):
    import torch

    from core.embeddings.vectors import save_embedding
    from core.runs.run_events import Started
    from core.events import ListSink
    from core.training.config import TrainConfig
    from core.training.trainer import Trainer
    from train_helpers import make_images, tiny_config

    data = make_images(tmp_path / "data", n=2)
    init = tmp_path / "init"
    save_embedding(torch.randn(3, 32), init, name="init", step=0, base_model="tiny", base_hash=None, init_text="")
    config = tiny_config(tiny_model_dir, data, vectors=1, init_from=str(init) + ".safetensors", steps=2,
                         save_every=1)
    out = tmp_path / "out"
    sink = ListSink()
    Trainer(config, out, sink).run()
    assert config.vectors == 1 and config.steps == 2  # the caller's object
    assert TrainConfig.from_toml(out / "config.toml").vectors == 3
    assert any("init_from has 3 vectors" in e["message"] for e in sink.of_type("warning"))
    (started,) = [e for e in sink.typed() if isinstance(e, Started)]
    assert started.precision == "fp32" and started.device == "cpu"
    resumed = TrainConfig.from_toml(out / "config.toml")
    resumed.steps = 3
    Trainer(resumed, out, ListSink()).run(resume=True)
    assert resumed.vectors == 3 and TrainConfig.from_toml(out / "config.toml").vectors == 3
