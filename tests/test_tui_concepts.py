"""The wizard uses core's concepts (names, stage order, doctor findings, helper processes) and keeps I/O off the UI
thread."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.tui_support import freeze_cursor, gradient_png, wait_idle
from tui.app import TiwizApp
from tui.state import STAGES, WizardState, neighbour_stage


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_stage_order_is_one_list():
    stepped = [s for s in STAGES if s not in ("finish",)]
    for a, b in zip(stepped, stepped[1:]):
        assert neighbour_stage(a, +1) == b and neighbour_stage(b, -1) == a
    assert neighbour_stage("folders", +1, skip_preprocess=True) == "captions"
    assert neighbour_stage("captions", -1, skip_preprocess=True) == "folders"
    assert neighbour_stage("nowhere", +1) == "start"


def test_cancelling_the_demo_kills_its_helper(tmp_path, monkeypatch):
    home = tmp_path / "home-for-demo-cancel"
    monkeypatch.setenv("TIWIZ_HOME", str(home))
    app = TiwizApp(state=WizardState(), save=False, runs_root=tmp_path / "runs", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            await pilot.press("d")
            deadline = time.monotonic() + 30
            while not _processes_mentioning(str(home)) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert _processes_mentioning(str(home)), "the demo helper never started"
            await pilot.press("escape")
            await wait_idle(pilot)
            assert app.screen.STAGE == "start"
            assert "cancelled" in str(app.screen.query_one("#message").content)
    asyncio.run(drive())
    deadline = time.monotonic() + 5
    while _processes_mentioning(str(home)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _processes_mentioning(str(home))


def test_doctor_findings_show_when_one_is_an_error(tmp_path, monkeypatch):
    freeze_cursor(monkeypatch)
    ds = tmp_path / "ds"
    for i in range(3):
        gradient_png(ds / f"img{i}.png", i)
    (ds / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")  # unreadable: an error finding
    state = WizardState(dataset=str(ds))
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="captions", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot, timeout=120)
            screen = app.screen
            count = str(screen.query_one("#cap-count").content)
            assert "doctor:" in count and "finding" in count, count
            everything = [sev for v in screen.findings.values() for sev, _ in v] + [
                sev for sev, _ in screen.general_findings]
            assert "error" in everything and "warning" in everything  # every finding kept, not only the error
            assert "failed" not in str(screen.query_one("#cap-findings").content)
    asyncio.run(drive())


def test_name_uses_core_rules_and_flags_clip_words_at_once(tmp_path, monkeypatch):
    freeze_cursor(monkeypatch)
    from core.embeddings.vectors import MAX_NAME_LENGTH

    state = WizardState(name="cat")
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="embedding", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            screen = app.screen
            plan = str(screen.query_one("#emb-plan").content)
            assert "CLIP" in plan  # a real CLIP word: said at once, before Next
            assert "CLIP" in screen.check()
            name = screen.query_one("#emb-name")
            assert name.max_length == MAX_NAME_LENGTH
            for bad in ("-dash", "my style", "a/b", "CON"):
                name.value = bad
                await pilot.pause()
                assert screen.check(), bad  # refused, as the trainer would rename or refuse it
            name.value = "x" * 80  # longer than the wizard's old limit of 64, within core's
            await pilot.pause()
            assert name.value == "x" * 80 and screen.check() is None
    asyncio.run(drive())


def test_wizard_shows_the_caption_the_trainer_uses(tmp_path, monkeypatch):
    from tests.tui_support import make_photos
    from tui.training_text import sample_prompts

    freeze_cursor(monkeypatch)
    ds = make_photos(tmp_path / "ds", 2, {0: "a cat,\r\n blue hat"})
    (ds / "0042-tabby_cat.png").write_bytes((ds / "photo-01.png").read_bytes())
    template = tmp_path / "t.txt"
    template.write_text("[name], [filewords]\n")
    prompts = sample_prompts(str(template), "zxq", str(ds), n=3)
    # missing captions: the cleaned file name, as the trainer reads them
    assert prompts == ["zxq, tabby cat", "zxq, a cat, blue hat", "zxq, photo-01"]
    app = TiwizApp(state=WizardState(dataset=str(ds)), save=False, runs_root=tmp_path / "runs",
                   start_stage="captions", finder_roots=[])

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            field = app.screen.query_one("#cap-input")
            note = app.screen.query_one("#cap-tokens")
            assert field.value == "" and "“tabby cat”" in str(note.content)  # on a line that wraps, not cut at 80
            await pilot.press("down")
            await wait_idle(pilot)
            assert field.value == "a cat, blue hat" and "trainer uses" not in str(note.content)
    asyncio.run(drive())
