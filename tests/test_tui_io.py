"""The wizard keeps folder and caption I/O off the UI thread: folder scans are debounced in a worker, the caption
filter works on an index read once, and bulk tag edits run in a worker with one fsync per changed file."""

from __future__ import annotations

import os
import threading

from core.prep.captions import CaptionSet
from tests.tui_support import drive, freeze_cursor, make_photos, wait_idle
from tui.app import TiwizApp
from tui.state import WizardState


def _recording(monkeypatch, owner, name):
    """Wrap `owner.name` to record the thread of every call (the real function still runs)."""
    calls: list[str] = []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_bulk_edit_fsyncs_each_changed_file_once(tmp_path, monkeypatch):
    folder = make_photos(tmp_path / "set", 6, {i: f"photo {i}, red" for i in range(5)})
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    seen = []
    changed = CaptionSet(folder).add_tag("tabby", position="prepend", progress=lambda d, t: seen.append((d, t)))
    assert changed == 6  # five captions gain the tag, the uncaptioned image gets a caption file
    assert len(synced) == changed + 1  # one per file, and the folder once (was two per file)
    assert seen[-1] == (6, 6) and len(seen) == 6
    assert all(CaptionSet(folder).item(p).caption.startswith("tabby") for p in CaptionSet(folder).images())


def test_folder_scans_are_debounced_off_the_ui_thread(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    freeze_cursor(monkeypatch)
    make_photos(tmp_path / "photos", 3)
    from tui.screens import folders

    calls = _recording(monkeypatch, folders, "folder_report")
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", start_stage="folders",
                   finder_roots=[])

    async def body(pilot):
        calls.clear()
        for ch in "photos":
            await pilot.press(ch)
        await wait_idle(pilot)
        assert "3 images" in str(app.screen.query_one("#source-info").content)
        assert calls and len(calls) <= 2, calls  # not one scan per keystroke
        assert threading.main_thread().name not in calls
    drive(app, body, (100, 30))


def test_caption_filter_uses_the_index_and_bulk_edits_run_in_a_worker(tmp_path, monkeypatch):
    freeze_cursor(monkeypatch)
    folder = make_photos(tmp_path / "ds", 4, {0: "a cat, red", 1: "a dog, blue", 2: "a cat, green"})
    reads = _recording(monkeypatch, CaptionSet, "items")
    edits = _recording(monkeypatch, CaptionSet, "add_tag")
    state = WizardState(dataset=str(folder), skip_preprocess=True)
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="captions", finder_roots=[])

    async def body(pilot):
        await wait_idle(pilot, timeout=120)
        screen = app.screen
        assert len(screen.items) == 4 and len(reads) == 1  # the index, read once...
        assert reads[0] != threading.main_thread().name  # ...in a worker
        await pilot.press("ctrl+f")
        for ch in "cat":
            await pilot.press(ch)
        await wait_idle(pilot)
        assert [i.image.name for i in screen.items] == ["photo-00.png", "photo-02.png"]
        assert len(reads) == 1  # no rescan per keystroke
        await pilot.press("f2")
        await wait_idle(pilot)
        for ch in "tabby":
            await pilot.press(ch)
        await pilot.press("enter")
        await wait_idle(pilot)
        assert edits and edits[0] != threading.main_thread().name
        assert "2 caption files changed" in str(screen.query_one("#message").content)  # the filtered ones
        tagged = [i.image.name for i in screen.index_items if i.caption.startswith("tabby")]
        assert tagged == ["photo-00.png", "photo-02.png"]  # the index re-read after it
        assert not screen.query_one("#cap-input").disabled
    drive(app, body, (100, 30))
    assert [i for i in range(3) if (folder / f"photo-{i:02d}.txt").read_text().startswith("tabby")] == [0, 2]
    assert not (folder / "photo-03.txt").exists()


def test_checks_that_read_folders_still_ask_first(tmp_path, monkeypatch):
    """The run-name and destination checks moved into workers; their questions still come before anything runs."""
    from tests.tui_support import recorded_events, write_recorded_run
    from tui.screens.dialogs import ConfirmModal

    freeze_cursor(monkeypatch)
    write_recorded_run(tmp_path / "runs" / "zxqcat-1", recorded_events("zxqcat", steps=5, max_steps=5, finished=True),
                       state="finished")
    make_photos(tmp_path / "photos", 2)
    make_photos(tmp_path / "out", 1)
    state = WizardState(model="m", source=str(tmp_path / "photos"), dataset=str(tmp_path / "out"), name="zxqcat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="embedding", finder_roots=[])

    async def body(pilot):
        await pilot.press("ctrl+n")
        await wait_idle(pilot)
        assert isinstance(app.screen, ConfirmModal)  # a run of that name exists: asked before going on
        app.pop_screen()
        app.goto("preprocess")
        await wait_idle(pilot)
        await pilot.press("ctrl+r")
        await wait_idle(pilot)
        assert isinstance(app.screen, ConfirmModal)  # the destination has files: asked before preprocessing
    drive(app, body, (100, 30))
