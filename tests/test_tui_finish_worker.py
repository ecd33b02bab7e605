"""The Finish screen replays the run's event log in a thread worker: the screen is up and answers keys while a slow
log is read, then shows the files."""

from __future__ import annotations

import asyncio
import threading

from tests.tui_support import freeze_cursor, recorded_events, wait_idle, write_recorded_run
from tui.app import TiwizApp
from tui.screens import finish
from tui.state import WizardState


def test_finish_reads_the_event_log_off_the_ui_thread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TIWIZ_HOME", str(tmp_path / "home"))
    freeze_cursor(monkeypatch)
    run = write_recorded_run(tmp_path / "runs" / "mycat-1", recorded_events("mycat", steps=40, finished=True),
                             state="finished")
    release, readers = threading.Event(), []
    real = finish.final_files

    def slow_disk(run_dir):  # the real replay, held back as a slow network disk would
        readers.append(threading.current_thread())
        release.wait(30)
        return real(run_dir)

    monkeypatch.setattr(finish, "final_files", slow_disk)

    async def drive():
        app = TiwizApp(state=WizardState(stage="finish", name="mycat", run_dir=str(run)), save=False,
                       runs_root=tmp_path / "runs", start_stage="finish", finder_roots=[tmp_path])
        async with app.run_test(size=(100, 30)) as pilot:
            for _ in range(100):
                if readers:
                    break
                await pilot.pause(0.05)
            assert readers and readers[0] is not threading.main_thread()
            screen = app.screen
            assert "reading the run…" in str(screen.query_one("#fin-files").content)
            await pilot.press("c")  # the UI answers while the log is read; nothing to copy yet, and it says so
            assert "Still reading the run" in str(screen.query_one("#message").content)
            release.set()
            await wait_idle(pilot)
            files = str(screen.query_one("#fin-files").content)
            assert str(run / "mycat.safetensors") in files and "reading" not in files
            assert [p.name for p in screen.files] == ["mycat.safetensors", "mycat.pt"]
            assert "load_textual_inversion" in str(screen.query_one("#fin-snippet").content)

    asyncio.run(drive())
