"""The finish screen offers the suggested best step's checkpoint: `b` switches what `c` copies to it, under the final
embedding's name (so the trigger word stays the same)."""

from __future__ import annotations

import asyncio
import json

from tests.tui_support import recorded_events, wait_idle, write_recorded_run
from tui.app import TiwizApp
from tui.state import WizardState


def test_finish_offers_and_copies_the_best_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = recorded_events("mycat", steps=120, finished=True)
    events[-1].update(best_step=80, best_checkpoint="embeddings/mycat-80.safetensors")  # the trainer's Finished
    run = write_recorded_run(tmp_path / "runs" / "mycat-1", events, state="finished")
    (run / "embeddings").mkdir()
    for step in (40, 80, 120):
        (run / "embeddings" / f"mycat-{step}.safetensors").write_bytes(f"st{step}".encode())
        (run / "embeddings" / f"mycat-{step}.pt").write_bytes(f"pt{step}".encode())
    (run / "mycat.safetensors").write_bytes(b"final")
    (run / "mycat.pt").write_bytes(b"finalpt")
    webui = tmp_path / "stable-diffusion-webui" / "embeddings"
    webui.mkdir(parents=True)
    app = TiwizApp(state=WizardState(model="models/tiny", name="mycat", run_dir="runs/mycat-1"), save=False,
                   runs_root=tmp_path / "runs", start_stage="finish", finder_roots=[tmp_path])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            files = str(app.screen.query_one("#fin-files").content)
            assert "step 80" in files and "mycat-80.safetensors" in files
            await pilot.press("b")
            await wait_idle(pilot)
            await pilot.press("c")
            await wait_idle(pilot)
    asyncio.run(drive())
    copied = {p.name: p.read_bytes() for p in webui.iterdir()}
    assert copied and set(copied) <= {"mycat.safetensors", "mycat.pt"}
    assert all(body in (b"st80", b"pt80") for body in copied.values()), copied  # step 80's bytes, final names
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
