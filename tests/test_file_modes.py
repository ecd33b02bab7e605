"""Every file tiwiz writes honours the umask (0644 under 022), like a plain `open(path, "w")`; atomic writes go
through mkstemp, whose 0600 temp files must not leak their mode into the outputs."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from train_helpers import make_images, one_thread, tiny_config  # noqa: F401 (fixture)


@pytest.fixture
def umask022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def modes(root: Path) -> dict[str, int]:
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return {str(p): stat.S_IMODE(p.stat().st_mode) for p in paths}


def assert_0644(root: Path) -> None:
    found = modes(root)
    assert found, f"nothing written under {root}"
    wrong = {p: oct(m) for p, m in found.items() if m != 0o644}
    assert not wrong, wrong


def test_atomic_writers(tmp_path, umask022):
    from core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_write_with

    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "x")
    atomic_write_json(tmp_path / "c.json", {"x": 1})
    atomic_write_with(tmp_path / "d.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    assert_0644(tmp_path)


def test_a_stricter_umask_is_honoured_too(tmp_path):
    from core.atomic import atomic_write_text

    before = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(before)
    assert modes(tmp_path / "private.txt") == {str(tmp_path / "private.txt"): 0o600}


def test_embeddings_and_copies_into_ui_folders(tmp_path, umask022):
    import torch

    from core.embeddings.vectors import save_embedding
    from core.install import copy_embedding

    pt, st = save_embedding(torch.zeros(2, 8), tmp_path / "out" / "cat", name="cat", step=1, base_model="m",
                            base_hash=None, init_text="")
    folder = tmp_path / "stable-diffusion-webui" / "embeddings"
    folder.mkdir(parents=True)
    copy_embedding(pt, folder)
    copy_embedding(st, folder)
    assert_0644(tmp_path / "out")
    assert_0644(folder)


def test_captions_config_and_resume_state(tmp_path, umask022):
    from core.prep.captions import write_caption
    from core.training.config import TrainConfig
    from core.training.resume_state import save_state

    write_caption(tmp_path / "img.png", "a cat")
    TrainConfig.from_dict({"model": "m", "data": "d", "name": "cat"}, validate=False).to_toml(tmp_path / "c.toml")
    save_state(tmp_path / "state.pt", {"step": 1})
    assert_0644(tmp_path)


def test_preprocess_outputs(tmp_path, umask022):
    from core.prep.preprocess import run_preprocess

    make_images(tmp_path / "src", n=2)
    run_preprocess(tmp_path / "src", tmp_path / "dest", workers=1)
    assert_0644(tmp_path / "dest")


def test_converted_checkpoint_and_demo_model(tmp_path, umask022, tiny_model_dir):
    from core.models.builtin import write_demo_model
    from core.models.single_file import save_single_file

    save_single_file(tiny_model_dir, tmp_path / "conv" / "tiny.safetensors")
    assert_0644(tmp_path / "conv")
    write_demo_model(tmp_path / "demo")
    assert_0644(tmp_path / "demo")


def test_training_run_folder(tmp_path, umask022, one_thread, tiny_model_dir):
    from core.events import ListSink
    from core.training.trainer import Trainer

    data = make_images(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_model_dir, data, steps=2, save_every=1, preview_every=2, preview_steps=1)
    Trainer(cfg, tmp_path / "out", ListSink()).run()
    assert_0644(tmp_path / "out")


@pytest.mark.parametrize("flags", [["--random"], ["--family", "sdxl"]])
def test_demo_model_weights_get_the_umask_mode(tmp_path, flags, capsys):
    """Issue 25, #35: `tiwiz demo-model --random` and `--family sdxl` write every file (weights included) with the
    mode a new file gets under the umask, not 0600."""
    from core.cli import main

    old = os.umask(0o022)
    try:
        assert main(["demo-model", str(tmp_path / "m"), *flags]) == 0
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "m").rglob("*") if p.is_file()}
    assert any(name.endswith(".safetensors") for name in modes)
    assert {name: mode for name, mode in modes.items() if mode != 0o644} == {}


@pytest.mark.parametrize("random_model", [True, False])
def test_demo_preparation_writes_umask_modes(tmp_path, umask022, random_model):
    """Issue 25, #35 (the demo flow): `tiwiz demo` prepares its model (the random one with --random-model, else the
    shipped one), images, captions and template with the mode a new file gets under the umask, weights included."""
    from core.world.demo_job import prepare_demo

    prepare_demo(tmp_path / "demo", n_images=2, random_model=random_model)
    assert any(p.suffix == ".safetensors" for p in (tmp_path / "demo").rglob("*"))
    assert_0644(tmp_path / "demo")


def test_the_tiny_sdxl_model_writes_umask_modes(tmp_path, umask022):
    from core.models.builtin import write_tiny_sdxl_model

    write_tiny_sdxl_model(tmp_path / "xl")
    assert_0644(tmp_path / "xl")
