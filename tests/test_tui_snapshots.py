"""Snapshot tests: every wizard screen at 100x30 and the training monitor at 80x24, on fixed inputs (relative paths,
recorded events, generated images), so the pictures are deterministic. They double as the README screenshots."""

from __future__ import annotations

import os

import pytest

from tests.tui_support import (T0, copy_model, dump_text, freeze_cursor, make_photos, recorded_events, wait_idle,
                               write_recorded_run)
from tui.app import TiwizApp
from tui.state import WizardState

SIZE = (100, 30)


@pytest.fixture
def workspace(monkeypatch, tiny_model_dir):
    """cwd = a folder with models/tiny, photos/ (4 images, 2 captioned) and runs/ (one finished, one killed). The
    folder's path is fixed (screens such as Finish show absolute paths), and emptied first."""
    import shutil
    from pathlib import Path

    tmp_path = Path("/tmp/tiwiz-snapshots")
    shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TIWIZ_RUNS_DIR", "runs")
    freeze_cursor(monkeypatch)
    copy_model(tiny_model_dir, tmp_path / "models" / "tiny")
    make_photos(tmp_path / "photos", 4, {0: "a photo of a cat, blue background", 1: "a cat, sitting, window"})
    write_recorded_run(tmp_path / "runs" / "mycat-20250615-101010",
                       recorded_events("mycat", steps=400, max_steps=400, finished=True), state="finished")
    write_recorded_run(tmp_path / "runs" / "dog-20250614-090000",
                       recorded_events("dog", steps=120, max_steps=1000), state="running")
    for status in (tmp_path / "runs").glob("*/status.json"):  # fixed ages on the Start screen
        os.utime(status, (T0, T0))
    monkeypatch.setattr("tui.screens.start._now", lambda: T0 + 7200)
    return tmp_path


def make_app(stage: str, **state) -> TiwizApp:
    app = TiwizApp(state=WizardState(**state), save=False, runs_root="runs", start_stage=stage,
                   finder_roots=["models"])
    app.check_liveness = False
    return app


async def settle(pilot) -> None:
    await wait_idle(pilot)
    dump_text(pilot.app)


FILLED = dict(model="models/tiny", source="photos", dataset="dataset", name="mycat", init_text="a cat", vectors=2)


class TestWizardScreens:
    """Each stage as the user first sees it, with earlier stages filled in."""

    def test_start(self, workspace, snap_compare):
        assert snap_compare(make_app("start"), terminal_size=SIZE, run_before=settle)

    def test_model(self, workspace, snap_compare):
        assert snap_compare(make_app("model", model="models/tiny"), terminal_size=SIZE, run_before=settle)

    def test_folders(self, workspace, snap_compare):
        assert snap_compare(make_app("folders", **FILLED), terminal_size=SIZE, run_before=settle)

    def test_preprocess(self, workspace, snap_compare):
        assert snap_compare(make_app("preprocess", **FILLED), terminal_size=SIZE, run_before=settle)

    def test_captions(self, workspace, snap_compare):
        state = dict(FILLED, dataset="photos", skip_preprocess=True)
        assert snap_compare(make_app("captions", **state), terminal_size=SIZE, run_before=settle)

    def test_embedding(self, workspace, snap_compare):
        assert snap_compare(make_app("embedding", **FILLED), terminal_size=SIZE, run_before=settle)

    def test_training(self, workspace, snap_compare):
        state = dict(FILLED, dataset="photos", skip_preprocess=True)
        assert snap_compare(make_app("training", **state), terminal_size=SIZE, run_before=settle)

    def test_finish(self, workspace, snap_compare):
        state = dict(FILLED, run_dir="runs/mycat-20250615-101010")
        assert snap_compare(make_app("finish", **state), terminal_size=SIZE, run_before=settle)


class TestWizardScreens80x24:
    """Each stage at 80x24, the smallest terminal the wizard is laid out for."""

    @pytest.mark.parametrize("stage", ["start", "model", "folders", "preprocess", "captions", "embedding",
                                       "training", "finish"])
    def test_screen(self, workspace, snap_compare, stage):
        state = dict(FILLED, run_dir="runs/mycat-20250615-101010")
        if stage in ("captions", "training"):
            state.update(dataset="photos", skip_preprocess=True)
        assert snap_compare(make_app(stage, **state), terminal_size=(80, 24), run_before=settle)

    def test_training_with_buckets(self, workspace, snap_compare):
        """Buckets on: the side panel counts the images per bucket (the 96×96 photos are not upscaled: 64×64)."""
        state = dict(FILLED, dataset="photos", skip_preprocess=True, train={"buckets": True})
        assert snap_compare(make_app("training", **state), terminal_size=(80, 24), run_before=settle)


class TestMonitor:
    """The training monitor fed from a recorded run folder."""

    def test_monitor_running_80x24(self, workspace, snap_compare):
        app = make_app("monitor", run_dir="runs/dog-20250614-090000")
        assert snap_compare(app, terminal_size=(80, 24), run_before=settle)

    def test_monitor_finished_100x30(self, workspace, snap_compare):
        app = make_app("monitor", run_dir="runs/mycat-20250615-101010")
        assert snap_compare(app, terminal_size=SIZE, run_before=settle)
