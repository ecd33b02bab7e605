"""The wizard and embedding kinds (issue 20): tag captions get the kind's tag template with the reason said, the
Embedding screen picks the kind, and the Finish screen says how to use a negative embedding."""

from __future__ import annotations

import asyncio

from tests.test_tui_captions_writes import console_app, continue_saved
from tests.tui_support import burst, gradient_png, recorded_events, wait_idle, write_recorded_run


def test_tag_captions_propose_the_tag_template_and_the_kind_follows(monkeypatch, tmp_path):
    ds = tmp_path / "ds"
    for i in range(3):
        gradient_png(ds / f"img{i}.png", i)
        (ds / f"img{i}.txt").write_text("1girl, solo, blue hair, smile", encoding="utf-8")
    app = console_app(monkeypatch, tmp_path, {"stage": "captions", "dataset": str(ds), "skip_preprocess": True,
                                              "model": "m"})
    seen = {}

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            await burst(pilot, "ctrl+n")
            await wait_idle(pilot)
            seen["screen"] = type(app.screen).__name__
            seen["template"] = app.state.train.get("template")
            seen["notes"] = [str(n.message) for n in app._notifications]
            app.screen.set_focus(app.screen.query_one("#emb-kind"))
            await burst(pilot, "enter")
            await burst(pilot, "down", "down", "enter")  # Subject, Style, Negative
            await wait_idle(pilot)
            seen["after"] = dict(app.state.train)
            seen["help"] = str(app.screen.query_one("#emb-kind-help").content)
    asyncio.run(drive())
    assert seen["screen"] == "EmbeddingScreen"
    assert seen["template"] == "subject_tags"
    assert any("booru tags" in note and "Illustrious" in note for note in seen["notes"])
    assert seen["after"]["kind"] == "negative" and seen["after"]["template"] == "style_tags"
    assert "negative prompt" in seen["help"]


def test_sentence_captions_keep_the_template(monkeypatch, tmp_path):
    ds = tmp_path / "ds"
    for i in range(3):
        gradient_png(ds / f"img{i}.png", i)
        (ds / f"img{i}.txt").write_text("a photo of a red cube on a table", encoding="utf-8")
    app = console_app(monkeypatch, tmp_path, {"stage": "captions", "dataset": str(ds), "skip_preprocess": True,
                                              "model": "m"})

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await continue_saved(pilot)
            await burst(pilot, "ctrl+n")
            await wait_idle(pilot)
            return dict(app.state.train)
    assert "template" not in asyncio.run(drive())


def test_finish_screen_says_how_to_use_a_negative_embedding(monkeypatch, tmp_path):
    run = write_recorded_run(tmp_path / "elsewhere" / "zxqneg-1", recorded_events("zxqneg", steps=40, max_steps=40,
                                                                          finished=True), state="finished")
    (run / "config.toml").write_text('model = "m"\nname = "zxqneg"\nkind = "negative"\n', encoding="utf-8")
    app = console_app(monkeypatch, tmp_path, {"stage": "finish", "run_dir": str(run), "name": "zxqneg",
                                              "model": "m"})

    async def drive():
        async with app.run_test(size=(100, 40)) as pilot:
            await continue_saved(pilot)
            await wait_idle(pilot)
            return str(app.screen.query_one("#fin-usage").content)
    text = asyncio.run(drive())
    assert "NEGATIVE prompt" in text and "A1111/Forge" in text
    assert "embedding:zxqneg" in text and "negative input" in text and "CLIPTextEncode" in text
