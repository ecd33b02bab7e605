"""`core.install` and `tiwiz install`: finding A1111/ComfyUI/InvokeAI embedding folders, the right file per UI, atomic
copies with the umask's mode; and the wizard's finish screen copying through the same code."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from core.errors import TiwizError
from core.install import embedding_files, find_targets, install, is_sdxl, pick_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def installs(tmp_path):
    a1111 = tmp_path / "stable-diffusion-webui" / "embeddings"
    comfy = tmp_path / "ComfyUI" / "models" / "embeddings"
    invoke = tmp_path / "invokeai" / "autoimport" / "embedding"
    for p in (a1111, comfy, invoke):
        p.mkdir(parents=True)
    return {"A1111": a1111, "ComfyUI": comfy, "InvokeAI": invoke}


@pytest.fixture
def sd1_run(tmp_path):
    """A finished run's final files, written by the trainer's own saver."""
    import torch

    from core.embeddings.vectors import save_embedding

    run = tmp_path / "runs" / "cat-1"
    save_embedding(torch.randn(2, 8), run / "cat", name="cat", step=10, base_model="m", base_hash=None, init_text="")
    (run / "embeddings").mkdir()
    return run


@pytest.fixture
def sdxl_file(tmp_path):
    path = tmp_path / "xl" / "dog.safetensors"
    path.parent.mkdir()
    save_file({"clip_l": np.zeros((2, 768), np.float32), "clip_g": np.zeros((2, 1280), np.float32)}, str(path))
    return path


def test_finds_every_ui(installs, tmp_path):
    found = [(t.app, t.path) for t in find_targets([tmp_path])]
    assert found == [("A1111", installs["A1111"]), ("ComfyUI", installs["ComfyUI"]),
                     ("InvokeAI", installs["InvokeAI"])]


def test_right_file_per_ui(sd1_run, sdxl_file):
    files = embedding_files(sd1_run)  # a run folder: its final files
    assert {p.name for p in files} == {"cat.safetensors", "cat.pt"}
    assert pick_file(files, "A1111").name == "cat.safetensors"
    assert pick_file(files, "ComfyUI").name == "cat.safetensors"
    assert pick_file(files, "InvokeAI").name == "cat.pt"  # SD1: its install check misreads the one-tensor file
    assert pick_file(files, "folder").name == "cat.safetensors"
    # A file named alone is the one installed: a same-stem file beside it may be another embedding (issue 25, #34).
    assert embedding_files(sd1_run / "cat.pt") == [sd1_run / "cat.pt"]
    assert is_sdxl(sdxl_file) and not is_sdxl(sd1_run / "cat.safetensors")
    for app in ("A1111", "ComfyUI", "InvokeAI", "folder"):
        assert pick_file(embedding_files(sdxl_file), app) == sdxl_file


def test_install_cli_copies_atomically_with_the_umask(installs, sd1_run, tmp_path):
    def cli(*args, umask="027"):
        code = f"import os, sys; os.umask(0o{umask}); from core.cli import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run([sys.executable, "-c", code, "install", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    out = cli(str(sd1_run), "--root", str(tmp_path))  # three installs: ambiguous without --to
    assert out.returncode == 2 and "--to" in out.stderr and "Traceback" not in out.stderr
    out = cli(str(sd1_run), "--to", "invokeai", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    written = installs["InvokeAI"] / "cat.pt"
    assert written.read_bytes() == (sd1_run / "cat.pt").read_bytes()
    assert stat.S_IMODE(written.stat().st_mode) == 0o640  # 0666 & ~027, not mkstemp's 0600
    assert not [p for p in installs["InvokeAI"].iterdir() if p.name.startswith(".")]  # no temp file left
    out = cli(str(sd1_run), "--to", "invokeai", "--root", str(tmp_path))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert cli(str(sd1_run), "--to", "invokeai", "--root", str(tmp_path), "--overwrite").returncode == 0
    folder = tmp_path / "mine"
    folder.mkdir()
    out = cli(str(sd1_run / "cat.safetensors"), "--to", str(folder), umask="022")
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE((folder / "cat.safetensors").stat().st_mode) == 0o644
    out = cli(str(tmp_path / "nope.safetensors"), "--to", str(folder))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_install_errors(tmp_path, sd1_run):
    with pytest.raises(TiwizError, match="no ComfyUI embeddings folder"):
        install(sd1_run, "comfyui", roots=[tmp_path / "empty"])
    with pytest.raises(TiwizError, match="not a folder"):
        install(sd1_run, str(tmp_path / "missing-dir"), roots=[])
    with pytest.raises(TiwizError, match="no final embedding"):
        install(sd1_run / "embeddings", str(tmp_path), roots=[])


def test_install_is_torch_free():
    code = ("import sys, core.install, core.cli.install; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers', 'textual') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_finish_screen_copies_the_right_file_with_core(tmp_path, monkeypatch, installs, sd1_run):
    from tests.tui_support import freeze_cursor, recorded_events, wait_idle, write_recorded_run
    from tui.app import TiwizApp
    from tui.state import WizardState

    freeze_cursor(monkeypatch)
    events = recorded_events("cat", steps=10, max_steps=10, every=5, finished=True)
    write_recorded_run(sd1_run, events, state="finished")
    state = WizardState(stage="finish", name="cat", run_dir=str(sd1_run))
    app = TiwizApp(state=state, save=False, runs_root=tmp_path / "runs", start_stage="finish",
                   finder_roots=[tmp_path])
    app.check_liveness = False

    async def drive():
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_idle(pilot)
            screen = app.screen
            assert [t.app for t in screen.targets] == ["A1111", "ComfyUI", "InvokeAI"]
            screen.query_one("#fin-targets").highlighted = 2
            await pilot.press("c")
            await wait_idle(pilot)
            assert "Copied cat.pt" in str(screen.query_one("#message").content)
    asyncio.run(drive())
    assert (installs["InvokeAI"] / "cat.pt").read_bytes() == (sd1_run / "cat.pt").read_bytes()
    assert not (installs["InvokeAI"] / "cat.safetensors").exists()


def test_install_never_widens_a_private_file_nor_copies_what_is_not_an_embedding(installs, sd1_run, tmp_path):
    """Issue 25, #34: a symlinked 0600 file is copied 0600 (never 0644), and a file that is not an embedding (a
    private key named .pt, a model checkpoint) is refused without writing anything."""
    folder = tmp_path / "mine"
    folder.mkdir()
    private = tmp_path / "private" / "cat.safetensors"
    private.parent.mkdir()
    private.write_bytes((sd1_run / "cat.safetensors").read_bytes())
    private.chmod(0o600)
    link = tmp_path / "link.safetensors"
    link.symlink_to(private)
    _, written = install(link, str(folder), roots=[])
    assert stat.S_IMODE(written.stat().st_mode) == 0o600 and written.read_bytes() == private.read_bytes()
    key = tmp_path / "id_ed25519.pt"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n")
    model = tmp_path / "model.safetensors"
    save_file({f"model.diffusion_model.w{i}": np.zeros((2, 2), np.float32) for i in range(8)}, str(model))
    text = tmp_path / "notes.safetensors"
    text.write_text("not tensors at all")
    for bad in (key, model, text):
        with pytest.raises(TiwizError, match="not an embedding"):
            install(bad, str(folder), roots=[])
    assert sorted(p.name for p in folder.iterdir()) == ["link.safetensors"]


def test_invokeai_gets_the_named_file_in_a_layout_its_probe_reads(installs, sd1_run, tmp_path):
    """Issue 25, #34 and #25: `install X.safetensors --to invokeai` never swaps in a .pt lying beside it. InvokeAI's
    probe reads the token width of a single-tensor file from shape[0] (the vector count), but of an `emb_params`
    tensor from shape[-1]: the named file is installed as `{emb_params: [n, dim]}`, the same vectors (A1111, ComfyUI
    and kohya read that layout too)."""
    from safetensors.numpy import load_file

    named = tmp_path / "mine" / "cat.safetensors"
    named.parent.mkdir()
    named.write_bytes((sd1_run / "cat.safetensors").read_bytes())
    (named.parent / "cat.pt").write_bytes(b"PK\x03\x04 another embedding entirely")
    target, written = install(named, "invokeai", roots=[tmp_path])
    assert target.app == "InvokeAI" and written == installs["InvokeAI"] / "cat.safetensors"
    assert not (installs["InvokeAI"] / "cat.pt").exists()
    original = load_file(str(named))
    installed = load_file(str(written))
    assert list(installed) == ["emb_params"]
    assert np.array_equal(installed["emb_params"], next(iter(original.values())))
    assert installed["emb_params"].shape == (2, 8)  # [vectors, width]: InvokeAI reads the width from shape[-1]
