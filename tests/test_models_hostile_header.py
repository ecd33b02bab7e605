"""A `.safetensors` whose header is deeply nested JSON (issue 13, item 5): it is skipped with a reason, and the good
checkpoints beside it are still listed by `tiwiz models` and by the finder the wizard uses."""

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import TiwizError
from core.models.find import find_checkpoints
from core.models.headers import read_safetensors_header

ROOT = Path(__file__).resolve().parent.parent
SD1 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
       "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 768)}


def _write_header(path: Path, header: bytes) -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    return path


def _plant(folder: Path) -> Path:
    folder.mkdir()
    save_file(SD1, folder / "good.safetensors")
    _write_header(folder / "nested.safetensors", b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    return folder


def test_a_deeply_nested_header_is_a_clear_error(tmp_path):
    path = _plant(tmp_path / "models") / "nested.safetensors"
    with pytest.raises(TiwizError, match="nested too deeply"):
        read_safetensors_header(path)


def test_nesting_inside_strings_is_not_counted(tmp_path):
    tensors = {"x": torch.zeros(1)}
    save_file(tensors, tmp_path / "ok.safetensors", metadata={"note": "[" * 5000 + "{" * 5000})
    assert read_safetensors_header(tmp_path / "ok.safetensors").metadata["note"].startswith("[[[")


def test_good_models_are_listed_beside_a_hostile_one(tmp_path):
    folder = _plant(tmp_path / "models")
    found = {i.path.name: i for i in find_checkpoints([folder], defaults=False)}
    assert found["good.safetensors"].usable
    assert "nested too deeply" in found["nested.safetensors"].problem
    out = subprocess.run([sys.executable, "-m", "core.cli", "models", "--only", "--all", "--json", str(folder)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = {Path(json.loads(line)["path"]).name for line in out.stdout.splitlines()}
    assert listed == {"good.safetensors", "nested.safetensors"}
