"""`tiwiz inspect` on hostile inputs (issue 25, item 29): truncated and lying SDXL single files, a huge header, a
diffusers folder whose weights are a pickle with code in it, and FIFOs. Each is a one-line error, never a traceback
and never a hang; nothing that is not a regular file is opened."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
L_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
G_KEY = "conditioner.embedders.1.model.token_embedding.weight"
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def tiwiz(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "core.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def raw_safetensors(path: Path, header: dict, data: bytes, length: int | None = None) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path


def sdxl_header(rows=16, l_width=8, g_width=12, **override) -> tuple[dict, bytes]:
    """A small SDXL single file's header: the UNet marker and both token-embedding matrices (F32)."""
    entries = {UNET_KEY: ("F32", [2]), L_KEY: ("F32", [rows, l_width]), G_KEY: ("F32", [rows, g_width])}
    entries.update(override)
    header, offset = {}, 0
    for key, (dtype, shape) in entries.items():
        n = 4
        for d in shape:
            n *= d
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    import numpy as np

    return header, np.random.default_rng(0).uniform(0.5, 1.5, offset // 4).astype("<f4").tobytes()


@pytest.fixture(scope="module")
def embedding(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("emb") / "zxq.safetensors"
    save_file({"clip_l": torch.ones(1, 8), "clip_g": torch.ones(1, 12)}, str(path))
    return path


def hostile_models(folder: Path) -> dict[str, Path]:
    out = {}
    header, data = sdxl_header()
    out["sane"] = raw_safetensors(folder / "sane.safetensors", header, data)
    out["truncated"] = raw_safetensors(folder / "truncated.safetensors", header, data[: len(data) // 2])
    out["huge header length"] = raw_safetensors(folder / "huge.safetensors", header, data, length=1 << 40)
    lying, _ = sdxl_header(**{L_KEY: ("F32", [49408, 768])})
    lying[L_KEY]["data_offsets"] = [lying[UNET_KEY]["data_offsets"][1], lying[UNET_KEY]["data_offsets"][1] + 64]
    out["lying shape"] = raw_safetensors(folder / "lying.safetensors", lying, bytes(10 ** 6))
    zeros, zero_data = sdxl_header()
    out["all-zero vocabulary"] = raw_safetensors(folder / "zeros.safetensors", zeros, bytes(len(zero_data)))
    flat, flat_data = sdxl_header(**{L_KEY: ("F32", [128])})
    out["one-dimensional"] = raw_safetensors(folder / "flat.safetensors", flat, flat_data)
    empty, empty_data = sdxl_header(**{L_KEY: ("F32", [0, 8])})
    out["no rows"] = raw_safetensors(folder / "empty.safetensors", empty, empty_data)
    odd, odd_data = sdxl_header(**{L_KEY: ("Q9", [16, 8])})
    out["unknown dtype"] = raw_safetensors(folder / "dtype.safetensors", odd, odd_data)
    backwards, back_data = sdxl_header()
    backwards[G_KEY]["data_offsets"] = backwards[G_KEY]["data_offsets"][::-1]
    out["offsets backwards"] = raw_safetensors(folder / "backwards.safetensors", backwards, back_data)
    overlap, over_data = sdxl_header()
    overlap[G_KEY]["data_offsets"] = [0, overlap[G_KEY]["data_offsets"][1] - overlap[G_KEY]["data_offsets"][0]]
    out["overlapping"] = raw_safetensors(folder / "overlap.safetensors", overlap, over_data)
    bad_entry, bad_data = sdxl_header()
    bad_entry[L_KEY]["shape"] = ["many", 8]
    out["text in a shape"] = raw_safetensors(folder / "text-shape.safetensors", bad_entry, bad_data)
    return out


def assert_one_line_error(out, *words):
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiwiz: error: "), out.stderr
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr
    for word in words:
        assert word in lines[0], lines[0]


def in_process(capsys, *args):
    """The CLI's main in this process (a model import per file would take minutes): an exception it does not turn
    into a message fails the test, as a traceback would."""
    from core.cli import main

    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def test_hostile_sdxl_single_files_are_one_line_errors(tmp_path, embedding, capsys):
    models = hostile_models(tmp_path)
    ok = in_process(capsys, "inspect", embedding, "--model", models.pop("sane"))
    assert ok.returncode == 0, ok.stderr
    for what, path in models.items():
        assert_one_line_error(in_process(capsys, "inspect", embedding, "--model", path), path.name)


def test_pickle_bin_in_a_diffusers_folder_is_refused_in_one_line(tmp_path, embedding, capsys):
    import argparse

    import torch

    model = tmp_path / "model"
    (model / "text_encoder").mkdir(parents=True)
    torch.save({"text_model.embeddings.token_embedding.weight": torch.ones(16, 8), "x": argparse.Namespace(a=1)},
               model / "text_encoder" / "pytorch_model.bin")
    out = in_process(capsys, "inspect", embedding, "--model", model)
    assert_one_line_error(out, "pytorch_model.bin")


def test_fifos_are_refused_not_opened(tmp_path, embedding):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    assert_one_line_error(tiwiz("inspect", embedding, "--model", fifo, timeout=60), "not a regular file")
    assert_one_line_error(tiwiz("inspect", fifo, timeout=60), "not a regular file")
    model = tmp_path / "folder"
    (model / "text_encoder").mkdir(parents=True)
    os.mkfifo(model / "text_encoder" / "model.safetensors")
    assert_one_line_error(tiwiz("inspect", embedding, "--model", model, timeout=60), "not a regular file")


def test_training_refuses_a_fifo_model_before_a_worker_starts(tmp_path):
    """A worker blocked opening a FIFO cannot be stopped (no step ever runs): `train` refuses it up front, as the
    model itself or inside a diffusers folder, and for a resume."""
    from core.errors import TiwizError
    from core.runs import api as runapi

    data = tmp_path / "data"
    data.mkdir()
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    config = {"model": str(fifo), "data": str(data), "name": "x", "steps": 4, "device": "cpu",
              "output": str(tmp_path / "run")}
    with pytest.raises(TiwizError, match="model: .*not a regular file"):
        runapi.start_run(config)
    folder = tmp_path / "folder"
    (folder / "unet").mkdir(parents=True)
    os.mkfifo(folder / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(TiwizError, match="model: .*diffusion_pytorch_model.safetensors is not a regular file"):
        runapi.start_run({**config, "model": str(folder)})
    assert not (tmp_path / "run" / "worker.log").exists()
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "config.toml").write_text(f'model = "{fifo}"\ndata = "{data}"\nname = "x"\nsteps = 4\ndevice = "cpu"\n')
    with pytest.raises(TiwizError, match="model: .*not a regular file"):
        runapi.resume_run(run)
