"""In a browser (`tiwiz serve`) Chrome and Firefox keep ctrl+n, ctrl+w, ctrl+t, ctrl+q and F1 F3 F5 F6 F7 F11 F12 to
themselves, so every wizard binding on one of those keys has a second key they leave alone: f9 Next, f10 Quit, and
alt+ keys for the screens' F3/F5/F6 actions. These keys also reach the app unchanged through SSH and tmux."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil

import pytest
from textual._xterm_parser import XTermParser
from textual.app import App
from textual.screen import Screen

import tui.screens
from tests.tui_support import burst, console_app, console_home, copy_model, until, wait_idle

BROWSER_KEYS = {"ctrl+n", "ctrl+w", "ctrl+t", "ctrl+q", "f1", "f3", "f5", "f6", "f7", "f11", "f12"}


def _classes_with_bindings():
    from tui.app import make_app

    classes = {type(make_app([]))}
    for info in pkgutil.iter_modules(tui.screens.__path__, "tui.screens."):
        module = importlib.import_module(info.name)
        classes |= {c for _, c in inspect.getmembers(module, inspect.isclass)
                    if issubclass(c, (Screen, App)) and c.__module__ == module.__name__}
    return classes


def test_every_key_a_browser_keeps_has_a_second_key():
    checked = 0
    for cls in _classes_with_bindings():
        keys_of: dict[str, set[str]] = {}
        for key, bindings in cls._merge_bindings().key_to_bindings.items():
            for binding in bindings:
                keys_of.setdefault(binding.action, set()).add(key)
        for action, keys in keys_of.items():
            if keys & BROWSER_KEYS:
                checked += 1
                assert keys - BROWSER_KEYS, f"{cls.__name__}: {action} only on {sorted(keys)}"
    assert checked >= 8  # Next, Quit, the model screen's f3/f5, the captions' f3/f5/f6, the training's f6


def _keys(data: str) -> list[str]:
    """What the app's input parser makes of the bytes a terminal sends (the end of input flushes a lone escape)."""
    parser = XTermParser()
    events = list(parser.feed(data)) + list(parser.feed(""))
    return [e.key for e in events if hasattr(e, "key")]


def test_the_second_keys_survive_a_terminal_ssh_and_tmux():
    # xterm.js (the browser's terminal), tmux and xterm over SSH send F9/F10 as CSI 20~/21~ and alt+letter as ESC letter
    assert _keys("\x1b[20~") == ["f9"] and _keys("\x1b[21~") == ["f10"]
    assert _keys("\x1b[20~\x1b[20~ab\x1b[20~") == ["f9", "f9", "a", "b", "f9"]  # a burst in one read stays in order
    for letter in "rocxga":
        assert _keys("\x1b" + letter) == [f"alt+{letter}"]
    assert _keys("\x1bxcat") == ["alt+x", "c", "a", "t"]  # the tag typed right after alt+x


@pytest.fixture
def console(tmp_path, monkeypatch):
    return console_home(tmp_path, monkeypatch)


def test_f9_moves_from_start_onward_in_a_burst_and_f10_quits(console, tiny_model_dir):
    model = copy_model(tiny_model_dir, console / "model")
    app = console_app([])

    async def drive():
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_idle(pilot)
            assert type(app.screen).__name__ == "StartScreen"
            # Start -> Base model and the model's path typed: all queued before the app handles any of it
            await burst(pilot, "f9", "ctrl+u", *str(model))
            assert app.screen.STAGE == "model" and app.screen.query_one("#model-path").value == str(model)
            # (Next in that same burst is lost on the model screen, ctrl+n as well: the model screen's own matter)
            await burst(pilot, "f9")
            await until(pilot, lambda: getattr(app.screen, "STAGE", "") == "folders", 60, "the Folders screen")
            assert app.state.model == str(model)
            await burst(pilot, "f9")  # no images chosen: refused with the message ctrl+n gives
            assert app.screen.STAGE == "folders" and "image" in " ".join(
                str(w.content) for w in app.screen.query("#message")).lower()
            await pilot.press("f10")
            await pilot.pause()
            assert not app.is_running
    asyncio.run(drive())
