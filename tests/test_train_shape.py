"""The trainer's shape as docs/architecture.md states it (issue 21): its state is one value built by setup, no
Trainer attribute appears outside __init__, and its outcome's reason is the very enum of the `finished`/`stopped`
events."""

import ast
import dataclasses
import inspect
import typing

import pytest

from core.runs import run_events as ev
from core.training import trainer
from core.training.session import Session, setup


def test_the_outcome_reason_is_the_events_enum():
    hints = {cls: typing.get_type_hints(cls)["reason"] for cls in (trainer.Outcome, ev.Stopped)}
    assert hints[trainer.Outcome] is ev.EndReason and hints[ev.Stopped] is ev.EndReason
    assert typing.get_args(typing.get_type_hints(ev.Finished)["reason"]) == (ev.EndReason, type(None))
    outcome = trainer.Outcome(reason=ev.EndReason.AUTO_STOP, step=3, max_steps=9, pt="", safetensors="x.safetensors",
                              last_loss=None, last_val_loss=None, best_step=None, best_checkpoint=None,
                              best_basis=None)
    assert outcome.finished and not dataclasses.replace(outcome, reason=ev.EndReason.STOP).finished
    with pytest.raises(dataclasses.FrozenInstanceError):
        outcome.step = 4
    stopped = ev.parse(ev.Stopped(step=3, reason=outcome.reason).to_json())
    assert stopped.reason is ev.EndReason.AUTO_STOP


def test_every_trainer_attribute_is_declared_in_init():
    tree = ast.parse(inspect.getsource(trainer.Trainer))
    assigned: dict[str, set[str]] = {}
    for method in (n for n in tree.body[0].body if isinstance(n, ast.FunctionDef)):
        for node in ast.walk(method):
            targets = node.targets if isinstance(node, ast.Assign) else \
                [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                for t in ast.walk(target):
                    if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                        assigned.setdefault(method.name, set()).add(t.attr)
    declared = assigned.pop("__init__")
    assert assigned == {"request_stop": {"_stop_requested"}, "_run": {"session"}}
    assert set().union(*assigned.values()) <= declared


def test_the_session_is_built_by_setup_alone():
    assert trainer.setup is setup  # the trainer sets up through the one setup
    assert dataclasses.is_dataclass(Session)
    names = {f.name for f in dataclasses.fields(Session)}
    assert {"model", "precision", "scaler", "vectors", "splices", "optimizer", "ema", "dataset", "holdout_indices",
            "validation_set", "holdout_set", "generator", "template", "feed", "step"} <= names


WORKER_ONLY = ("session", "update", "guard", "validation", "checkpoints", "reports", "splice", "dataset",
               "conditioning")


def test_modules_that_import_torch_at_the_top_are_reached_only_through_the_worker():
    """docs/architecture.md: only the worker imports the trainer's modules, so they import torch at the top. No
    product module outside core/training (and the worker, which imports the trainer) imports one of them."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    worker_only = {f"core.training.{name}" for name in WORKER_ONLY}
    for name in worker_only:
        source = (root / (name.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        tree = ast.parse(source)
        at_top = any(isinstance(n, ast.Import) and [a.name for a in n.names] == ["torch"] for n in tree.body)
        lazy = [n for n in ast.walk(tree) if isinstance(n, ast.Import) and n not in tree.body
                and "torch" in [a.name for a in n.names]]
        assert at_top or "torch." not in source, name
        assert not lazy, name
    offenders = []
    for path in [*(root / "core").rglob("*.py"), *(root / "tui").rglob("*.py")]:
        rel = path.relative_to(root).with_suffix("")
        module = ".".join(rel.parts)
        if module.startswith("core.training."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] + [node.module] \
                if isinstance(node, ast.ImportFrom) and node.module else []
            offenders += [(module, n) for n in names if n in worker_only]
    assert offenders == []
