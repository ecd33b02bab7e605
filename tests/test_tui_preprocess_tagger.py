"""The Preprocess screen chooses the captioner (none, BLIP, tagger) and shows the chosen one's options; a run with the
tiny tagger writes tag captions; its progress bar and list fit 80x24 and 60x20 (issue 20, issue 25 items 14, 18)."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from tests.test_tui_captions_writes import console_app, continue_saved
from tests.tiny_tagger import build_tiny_tagger
from tests.tui_support import burst, wait_idle


def screen_text(app) -> str:
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text(styles=False)


def visible(app, selector: str) -> bool:
    widget = app.screen.query_one(selector)
    return all(node.display for node in [widget, *widget.ancestors_with_self] if hasattr(node, "display"))


def test_choose_the_tagger_and_run_it(monkeypatch, tmp_path):
    tagger = build_tiny_tagger(tmp_path / "wd-tiny")
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("RGB", (96, 64), (0, 0, 255)).save(src / "blue.png")
    Image.new("RGB", (200, 62), (255, 0, 0)).save(src / "wide.png")  # enlarged 3%: no warning
    state = {"stage": "preprocess", "source": str(src), "dataset": str(tmp_path / "ds"), "model": "m",
             "preprocess": {"width": 64, "height": 64}}
    app = console_app(monkeypatch, tmp_path, state)
    seen = {}

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await continue_saved(pilot)
            screen = app.screen
            assert type(screen).__name__ == "PreprocessScreen"
            seen["hidden"] = (visible(app, "#pp-tagger"), visible(app, "#pp-blip"))
            screen.set_focus(screen.query_one("#pp-captioner"))
            await burst(pilot, "enter")  # opens the list: none, BLIP, tagger
            await burst(pilot, "down", "down", "enter")
            await wait_idle(pilot)
            seen["chosen"] = (visible(app, "#pp-tagger"), visible(app, "#pp-tag_threshold"),
                              visible(app, "#pp-character_threshold"), visible(app, "#pp-blip"),
                              screen.query_one("#pp-tagger").value)
            screen.set_focus(screen.query_one("#pp-tagger"))
            await burst(pilot, "ctrl+u", *str(tagger), "tab", "ctrl+u", *"0.65", "ctrl+r")
            for _ in range(300):
                if "done:" in str(screen.query_one("#pp-status").content):
                    break
                await asyncio.sleep(0.2)
            await wait_idle(pilot)
            seen["80"] = screen_text(app)
            seen["status"] = str(screen.query_one("#pp-status").content)
            await pilot.resize_terminal(60, 20)
            await wait_idle(pilot)
            seen["60"] = screen_text(app)
    asyncio.run(drive())
    assert seen["hidden"] == (False, False)  # no captioner: neither model field
    assert seen["chosen"] == (True, True, True, False, "SmilingWolf/wd-eva02-large-tagger-v3")
    assert (tmp_path / "ds" / "blue.txt").read_text() == "hatsune miku, blue background, p70"
    assert "0 warnings" in seen["status"] and "2 written" in seen["status"]
    for size in ("80", "60"):
        assert "100%" in seen[size], seen[size]  # the progress bar's percentage is not cut
        assert "Skipped, warnings" in seen[size]
        assert "Run (ctrl+r)" in seen[size]
