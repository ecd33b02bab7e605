"""Pytest fixtures for the wizard's tests (loaded by conftest.py): the user's shell `tiwiz` starts in, with and
without a dataset, so each test file does not set it up again."""

from __future__ import annotations

import pytest

from tests.tui_support import console_home, make_photos


@pytest.fixture
def console(tmp_path, monkeypatch):
    """tmp_path as the current folder of a user with a home of their own and no tiwiz variables (see
    tests.tui_support.console_home); start the app in it with `console_app(argv, saved=...)`."""
    return console_home(tmp_path, monkeypatch)


@pytest.fixture
def wizard_home(console):
    """`console` with photos/ (two images) and an (empty) model/ folder, for screens after the model's."""
    make_photos(console / "photos", 2)
    (console / "model").mkdir()
    return console
