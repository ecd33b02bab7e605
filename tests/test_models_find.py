"""Finding checkpoints by their headers in A1111, ComfyUI and HF-cache trees, without importing torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import TiwizError
from core.models.find import find_checkpoints, inspect_checkpoint
from core.models.headers import read_safetensors_header

ROOT = Path(__file__).resolve().parent.parent
SD1 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
       "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(3, 768)}
SD2 = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 4, 1, 1),
       "cond_stage_model.model.token_embedding.weight": torch.zeros(3, 1024)}
SDXL = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1),
        "conditioner.embedders.1.model.positional_embedding": torch.zeros(2, 2)}
LORA = {"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 2)}


def _plant(base: Path) -> dict:
    home, hf, cwd = base / "home", base / "hf", base / "cwd"
    a1111 = home / "stable-diffusion-webui" / "models" / "Stable-diffusion"
    comfy = home / "ComfyUI" / "models" / "checkpoints"
    for folder in (a1111 / "styles", comfy, cwd, home / "a" / "b" / "c"):
        folder.mkdir(parents=True)
    save_file(SD1, a1111 / "v15.safetensors")
    save_file(SD2, a1111 / "styles" / "v21.safetensors")
    save_file(SDXL, a1111 / "xl.safetensors")
    (a1111 / "broken.safetensors").write_bytes(b"\xff" * 64)
    torch.save({"state_dict": SD1, "global_step": 10}, comfy / "comfy.ckpt")
    save_file(SD1, cwd / "loose.safetensors")
    save_file(LORA, cwd / "lora.safetensors")
    save_file(SD1, home / "a" / "b" / "c" / "deep.safetensors")  # beyond the shallow scan of ~
    snap = hf / "hub" / "models--someone--tiny-sd2" / "snapshots" / "0123abcd"
    for sub, name, cfg in (("text_encoder", "config.json", {"hidden_size": 1024, "hidden_act": "gelu"}),
                           ("scheduler", "scheduler_config.json", {"prediction_type": "v_prediction"}),
                           ("unet", "config.json", {"in_channels": 4})):
        (snap / sub).mkdir(parents=True)
        (snap / sub / name).write_text(json.dumps(cfg))
    (snap / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return {"home": home, "hf": hf, "cwd": cwd, "a1111": a1111, "comfy": comfy, "snap": snap}


def test_finds_planted_models_in_a_subprocess_without_torch(tmp_path):
    p = _plant(tmp_path)
    env = dict(os.environ, HOME=str(p["home"]), HF_HOME=str(p["hf"]), PYTHONPATH=str(ROOT))
    env.pop("HF_HUB_CACHE", None)
    env.pop("XDG_CACHE_HOME", None)
    code = ("import json, sys\nfrom core.models.find import find_checkpoints\n"
            "found = [i.to_dict() for i in find_checkpoints()]\n"
            "print(json.dumps({'found': found, 'heavy': sorted(m for m in ('torch', 'diffusers', 'transformers', "
            "'safetensors') if m in sys.modules)}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=p["cwd"], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    by_path = {Path(i["path"]).resolve(): i for i in result["found"]}

    def get(path):
        assert path.resolve() in by_path, (path, list(by_path))
        return by_path[path.resolve()]

    v15 = get(p["a1111"] / "v15.safetensors")
    assert (v15["source"], v15["family"], v15["kind"], v15["usable"]) == ("a1111", "sd1", "safetensors", True)
    assert get(p["a1111"] / "styles" / "v21.safetensors")["family"] == "sd2"
    xl = get(p["a1111"] / "xl.safetensors")
    assert xl["family"] == "sdxl" and "incomplete SDXL" in xl["problem"] and not xl["usable"]
    broken = get(p["a1111"] / "broken.safetensors")
    assert not broken["usable"] and "safetensors" in broken["problem"]
    comfy = get(p["comfy"] / "comfy.ckpt")
    assert (comfy["source"], comfy["kind"], comfy["family"]) == ("comfyui", "ckpt", "sd1")
    hf = get(p["snap"])
    assert (hf["source"], hf["kind"], hf["family"], hf["name"]) == ("hf-cache", "diffusers", "sd2", "someone/tiny-sd2")
    assert hf["prediction_type"] == "v_prediction"
    assert get(p["cwd"] / "loose.safetensors")["source"] == "user"
    assert (p["cwd"] / "lora.safetensors").resolve() not in by_path  # generic folders list recognised models only
    assert (p["home"] / "a" / "b" / "c" / "deep.safetensors").resolve() not in by_path


def test_given_roots_only(tmp_path):
    p = _plant(tmp_path)
    found = find_checkpoints([p["cwd"], p["home"] / "ComfyUI"], defaults=False)
    names = {i.path.name: i for i in found}
    assert set(names) == {"loose.safetensors", "lora.safetensors", "comfy.ckpt"}
    assert "LoRA" in names["lora.safetensors"].problem and not names["lora.safetensors"].usable
    assert names["comfy.ckpt"].source == "comfyui"
    # a given file, and a given diffusers folder
    found = find_checkpoints([p["a1111"] / "v15.safetensors", p["snap"]], defaults=False)
    assert {i.path.name: i.family for i in found} == {"v15.safetensors": "sd1", "0123abcd": "sd2"}
    assert {i.name for i in found} == {"v15.safetensors", "someone/tiny-sd2"}


def test_inspect_checkpoint(tmp_path, tiny_model_dir):
    info = inspect_checkpoint(tiny_model_dir)
    assert (info.kind, info.family, info.prediction_type, info.usable) == ("diffusers", "sd1", "epsilon", True)
    assert info.size_bytes > 1_000_000
    save_file(SD2, tmp_path / "m.safetensors", metadata={"note": "hi"})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    cut = inspect_checkpoint(tmp_path / "cut.safetensors")
    assert "truncated" in cut.problem and not cut.usable
    header = read_safetensors_header(tmp_path / "m.safetensors")
    assert header.metadata == {"note": "hi"} and header.shapes["cond_stage_model.model.token_embedding.weight"] == (3, 1024)
    with pytest.raises(TiwizError, match="no such file"):
        inspect_checkpoint(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TiwizError, match="not a diffusers model folder"):
        inspect_checkpoint(tmp_path / "empty")


def test_models_cli_lists_as_table_and_json(tmp_path):
    p = _plant(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = lambda *a: subprocess.run([sys.executable, "-m", "core.cli", "models", "--only", *a], env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=60, check=True).stdout
    table = run(str(p["home"]))
    assert "v15.safetensors" in table and "SD1.x" in table and "a1111" in table and "comfy.ckpt" in table
    rows = [json.loads(line) for line in run("--json", str(p["cwd"])).splitlines()]
    assert [r["name"] for r in rows] == ["loose.safetensors"]  # the LoRA only shows with --all
    rows = [json.loads(line) for line in run("--json", "--all", str(p["cwd"])).splitlines()]
    assert sorted(r["name"] for r in rows) == ["loose.safetensors", "lora.safetensors"]
