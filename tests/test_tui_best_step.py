"""The finish screen offers the suggested best step's checkpoint: `b` switches what `c` copies to it, under the final
embedding's name (so the trigger word stays the same)."""

from __future__ import annotations

import json

from tests.tui_support import drive, recorded_events, wait_idle, write_embedding, write_recorded_run
from tui.app import TiwizApp
from tui.state import WizardState


def test_finish_offers_and_copies_the_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = recorded_events("mycat", steps=120, finished=True)
    events[-1].update(best_step=80, best_checkpoint="embeddings/mycat-80.safetensors",  # the trainer's Finished
                      best_basis="holdout")
    run = write_recorded_run(tmp_path / "runs" / "mycat-1", events, state="finished")
    (run / "embeddings").mkdir()
    for step in (40, 80, 120):
        write_embedding(run / "embeddings" / f"mycat-{step}", seed=step)
    write_embedding(run / "mycat", seed=1)
    webui = tmp_path / "stable-diffusion-webui" / "embeddings"
    webui.mkdir(parents=True)
    app = TiwizApp(state=WizardState(model="models/tiny", name="mycat", run_dir="runs/mycat-1"), save=False,
                   runs_root=tmp_path / "runs", start_stage="finish", finder_roots=[tmp_path])

    async def body(pilot):
        files = str(app.screen.query_one("#fin-files").content)
        assert "step 80" in files and "mycat-80.safetensors" in files and "(lowest held-out loss)" in files
        await pilot.press("b")
        await wait_idle(pilot)
        await pilot.press("c")
        await wait_idle(pilot)
    drive(app, body, (100, 30))
    copied = {p.name: p.read_bytes() for p in webui.iterdir()}
    assert copied and set(copied) <= {"mycat.safetensors", "mycat.pt"}
    step80 = {(run / "embeddings" / f"mycat-80{ext}").read_bytes() for ext in (".safetensors", ".pt")}
    assert all(body in step80 for body in copied.values()), copied.keys()  # step 80's bytes, final names
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_finish_says_when_the_final_embedding_is_the_suggested_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = recorded_events("mycat", steps=120, finished=True)
    events[-1].update(best_step=120, best_checkpoint="embeddings/mycat-120.safetensors", best_basis="validation")
    run = write_recorded_run(tmp_path / "runs" / "mycat-1", events, state="finished")
    (run / "embeddings").mkdir()
    write_embedding(run / "embeddings" / "mycat-120", seed=120)
    write_embedding(run / "mycat", seed=1)
    app = TiwizApp(state=WizardState(model="models/tiny", name="mycat", run_dir="runs/mycat-1"), save=False,
                   runs_root=tmp_path / "runs", start_stage="finish", finder_roots=[])

    async def body(pilot):
        files = str(app.screen.query_one("#fin-files").content)
        assert "the final embedding above (step 120: lowest validation loss)" in files, files
        assert "b copies" not in files
    drive(app, body, (100, 30))


def test_the_monitor_labels_the_best_step_by_its_basis():
    from core.runs import run_events as ev
    from tui.run_view import RunView
    from tui.screens.monitor import quality_line

    view = RunView("nowhere")
    view.apply(ev.Validation(step=40, val_loss=0.2, best_step=None))
    assert "best step" not in quality_line(view)
    view.apply(ev.Checkpoint(step=40, safetensors="embeddings/x-40.safetensors", best_step=40,
                             best_basis="validation"))
    assert quality_line(view).startswith("best step 40 (lowest validation loss)")
    view.apply(ev.Validation(step=60, val_loss=0.1, best_step=60, best_basis="flat"))
    assert quality_line(view).startswith("best step 60 (validation loss flat)")
    view.apply(ev.Finished(step=80, best_step=60, best_basis="flat"))
    assert (view.best_step, view.best_basis, view.best_label) == (60, "flat", "best step 60 (validation loss flat)")
