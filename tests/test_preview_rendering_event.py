"""The trainer says when it begins rendering a preview (`preview_rendering`), so viewers can show "rendering
preview…" until the `preview` event (or the failure's warning) arrives; RunState folds it."""

from __future__ import annotations

import pytest

from core.events import ListSink
from core.runs.run_state import RunState
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_trainer_announces_each_preview_render(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    sink = ListSink()
    cfg = tiny_config(tiny_model_dir, data, steps=2, preview_every=2, preview_steps=1)
    Trainer(cfg, tmp_path / "out", sink).run()
    kinds = [(e["type"], e.get("step")) for e in sink.events]
    start, done = kinds.index(("preview_rendering", 2)), kinds.index(("preview", 2))
    assert start < done and all(k[0] != "step" for k in kinds[start:done])
    state = RunState.fold(sink.events[: start + 1])
    assert state.rendering_preview == 2
    state.apply_all(sink.events[start + 1:])
    assert state.rendering_preview is None


def test_a_step_or_a_failure_warning_ends_the_rendering_state():
    from core.runs import run_events as ev

    state = RunState.fold([ev.Started(step=0, max_steps=10), ev.PreviewRendering(step=4)])
    assert state.rendering_preview == 4
    state.apply(ev.Warning(step=3, message="unrelated"))
    assert state.rendering_preview == 4
    state.apply(ev.Warning(step=4, message="preview at step 4 failed: RuntimeError: OOM"))
    assert state.rendering_preview is None
    state.apply(ev.PreviewRendering(step=5))
    state.apply(ev.Step(step=5, max_steps=10, loss=0.1))
    assert state.rendering_preview is None
