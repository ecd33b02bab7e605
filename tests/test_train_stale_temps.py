"""Temp files left by a save killed mid-write (kill -9 between mkstemp and rename) are removed when the run starts
or resumes; other files are left alone."""

from __future__ import annotations

import tempfile

import pytest

from core.atomic import TEMP_SUFFIX, temp_prefix
from core.events import ListSink
from core.training.trainer import Trainer
from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def leave_temp(folder, name):
    """What atomic_write_with leaves behind when killed before its rename."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix=temp_prefix(name), suffix=TEMP_SUFFIX, dir=folder)
    with open(fd, "wb") as fh:
        fh.write(b"half a file")
    return path


def temps(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob(f"*{TEMP_SUFFIX}"))


def test_stale_temps_removed_at_start_and_on_resume(tiny_model_dir, tmp_path):
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "out"
    leave_temp(out / "embeddings", "tcat-2.pt")
    (out / "embeddings" / ".notes.txt").write_text("mine")
    Trainer(tiny_config(tiny_model_dir, data, steps=2, save_every=2), out, ListSink()).run()
    assert temps(out) == []
    leave_temp(out / "embeddings", "tcat-2.safetensors")
    leave_temp(out / "state", "latest.pt")
    leave_temp(out / "previews", "tcat-2.png")
    leave_temp(out, "status.json")
    assert len(temps(out)) == 4
    summary = Trainer(tiny_config(tiny_model_dir, data, steps=3, save_every=2), out, ListSink()).run(resume=True)
    assert summary.step == 3 and temps(out) == []
    assert (out / "embeddings" / ".notes.txt").read_text() == "mine"
