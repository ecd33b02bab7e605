"""The Base model screen, started as `tiwiz`: a single file whose parts do not fit together is refused here, not in
the worker (issue 25 item 7); the hint under the found list says what Enter and ↓ do where the focus is (item 20)."""

from __future__ import annotations


import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.tui_support import burst, console_app, drive, message_text, until, wait_idle


@pytest.fixture
def home(console, tiny_model_dir):
    from core.models.single_file import save_single_file

    home = console
    good = save_single_file(tiny_model_dir, home / "models" / "tiny.safetensors")
    tensors = load_file(str(good))
    key = "first_stage_model.decoder.conv_out.weight"
    tensors[key] = np.zeros((3, 16, 3, 3), dtype=tensors[key].dtype)
    save_file(tensors, str(home / "models" / "mixed.safetensors"))
    return home


def info(app) -> str:
    return str(app.screen.query_one("#model-info").render())


def status(app) -> str:
    return str(app.screen.query_one("#found-status").render())


def test_a_file_whose_parts_do_not_fit_is_refused_on_the_model_screen(home):
    app = console_app([])

    async def body(pilot):
        await wait_idle(pilot)
        await burst(pilot, "n")
        assert app.screen.STAGE == "model"
        await burst(pilot, *str(home / "models" / "mixed.safetensors"))
        await until(pilot, lambda: "cannot use" in info(app), 30, "the model's description")
        assert "VAE tensor first_stage_model.decoder.conv_out.weight has shape (3, 16, 3, 3)" in info(app)
        await burst(pilot, "ctrl+n")
        assert app.screen.STAGE == "model" and "parts do not match" in message_text(app)
        await burst(pilot, "ctrl+u", *str(home / "models" / "tiny.safetensors"))
        await until(pilot, lambda: "SD 1.x" in info(app) and "cannot" not in info(app), 30, "the good model")
        await burst(pilot, "ctrl+n")
        assert app.screen.STAGE == "folders"
        assert app.state.model_family == "sd1" and app.state.text_widths == [32]
    drive(app, body)


def test_the_found_list_hint_follows_the_focus(home):
    app = console_app([])
    app.finder_roots = [home / "models"]

    async def body(pilot):
        await wait_idle(pilot)
        await burst(pilot, "n")
        await until(pilot, lambda: "found" in status(app), 30, "the search")
        assert app.focused.id == "model-path" and "↓ goes to the list" in status(app)
        await burst(pilot, "down", "enter")  # ↓ then Enter in one burst: the list's first model is picked
        assert app.focused.id == "model-path"
        assert app.screen.query_one("#model-path").value.endswith(".safetensors")
        await burst(pilot, "down")
        assert app.focused.id == "found" and "Enter picks one" in status(app)
    drive(app, body)
