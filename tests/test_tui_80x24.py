"""Every wizard screen at 80x24: each key the footer offers is shown whole (not cut mid-word, not pushed off)."""

from __future__ import annotations

import asyncio

import pytest

from tests.tui_support import (copy_model, freeze_cursor, make_photos, recorded_events, wait_idle,
                               write_recorded_run)
from tui.app import TiwizApp
from tui.state import WizardState

STAGES = ["start", "model", "folders", "preprocess", "captions", "embedding", "training", "finish"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("ws80")
    copy_model(tiny_model_dir, root / "models" / "tiny")
    make_photos(root / "photos", 3, {0: "a photo of a cat, blue background"})
    write_recorded_run(root / "runs" / "mycat-1", recorded_events("mycat", steps=40, max_steps=40, finished=True),
                       state="finished")
    return root


def footer_problems(app) -> list[str]:
    """Shown bindings whose "key description" does not appear whole on the footer line."""
    import io

    from rich.console import Console
    from textual.widgets import Footer

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    footer = app.screen.query_one(Footer)
    line = console.export_text(styles=False).splitlines()[footer.region.y]
    missing = []
    for key, active in app.screen.active_bindings.items():
        binding = active.binding
        if not binding.show or not active.enabled:
            continue
        if binding.description and f" {binding.description}" not in line:
            missing.append(f"{binding.description!r} not whole in {line.rstrip()!r}")
    return missing


@pytest.mark.parametrize("stage", STAGES)
def test_footer_fits_at_80x24(workspace, monkeypatch, stage):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("TIWIZ_HOME", str(workspace / "home"))
    freeze_cursor(monkeypatch)
    state = WizardState(model="models/tiny", source="photos", dataset="photos", skip_preprocess=stage != "preprocess",
                        name="zxq-cat", init_text="a cat", vectors=2, run_dir="runs/mycat-1")
    app = TiwizApp(state=state, save=False, runs_root="runs", start_stage=stage, finder_roots=["models"])
    app.check_liveness = False

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            return footer_problems(app)
    assert asyncio.run(drive()) == []
