"""A single file's parts checked from its header (issue 25 item 7): the full-size SD1/SD2/SDXL layouts and our tiny
files pass; a missing tensor, a wrong shape, or a text encoder that does not fit the UNet is named."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from core.models.headers import read_safetensors_header
from core.models.parts import part_problems, single_file_problem


def _meta_layout(family: str) -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.models.configs import bundled_config
    from core.models.convert import text_to_original, unet_to_original, vae_to_original

    def text(name, cls):
        cfg = {k: v for k, v in bundled_config(family, name).items() if k not in ("architectures", "model_type")}
        return cls(CLIPTextConfig(**cfg))

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(bundled_config(family, "unet"))
        vae = AutoencoderKL.from_config(bundled_config(family, "vae"))
        te = text("text_encoder", CLIPTextModel)
        te2 = text("text_encoder_2", CLIPTextModelWithProjection) if family == "sdxl" else None
    sd = {**unet_to_original(unet.state_dict(), unet.config), **vae_to_original(vae.state_dict(), vae.config),
          **text_to_original(te.state_dict(), family)}
    if te2 is not None:
        sd.update(text_to_original(te2.state_dict(), family, second=True))
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_layouts_pass(family):
    shapes = _meta_layout(family)
    assert part_problems(shapes, family) == []
    if family == "sdxl":  # and a CLIP-L of the wrong width no longer fits the UNet's cross-attention
        key = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
        wrong = {k: ((v[0], 1024) if k == key else v) for k, v in shapes.items()}
        found = part_problems(wrong, family)
        assert found and any("attn2.to_k.weight" in p for p in found)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, tiny_model_dir):
    from core.models.single_file import save_single_file

    return save_single_file(tiny_model_dir, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def _rewrite(src, dest, change):
    tensors = load_file(str(src))
    change(tensors)
    save_file(tensors, str(dest))
    return dest


def test_the_tiny_file_passes(tiny_file):
    assert single_file_problem(tiny_file) == ""


def test_a_missing_vae_tensor_is_named(tiny_file, tmp_path):
    bad = _rewrite(tiny_file, tmp_path / "bad.safetensors",
                   lambda t: t.pop("first_stage_model.decoder.up.0.block.1.conv2.weight"))
    problem = single_file_problem(bad)
    assert "VAE tensor first_stage_model.decoder.up.0.block.1.conv2.weight is missing" in problem
    assert "SD 1.x" in problem


def test_wrong_shapes_are_named(tiny_file, tmp_path):
    def change(t):
        key = "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.weight"
        t[key] = np.zeros((t[key].shape[0], t[key].shape[1] + 1), dtype=t[key].dtype)
        attn = next(k for k in t if k.endswith("attn2.to_k.weight"))
        t[attn] = np.zeros((t[attn].shape[0], 40), dtype=t[attn].dtype)

    problem = single_file_problem(_rewrite(tiny_file, tmp_path / "bad.safetensors", change))
    assert "text encoder tensor cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc2.weight has shape" \
        in problem
    assert "UNet tensor" in problem and "attn2.to_k.weight" in problem and ", 40)" in problem


def test_a_header_is_all_it_reads(tiny_file, tmp_path):
    """The check reads the header only: a file whose tensor bytes are damaged (but complete) still passes here."""
    data = bytearray(tiny_file.read_bytes())
    header_end = 8 + int.from_bytes(data[:8], "little")
    data[header_end:] = bytes(len(data) - header_end)
    zeroed = tmp_path / "zeroed.safetensors"
    zeroed.write_bytes(bytes(data))
    assert read_safetensors_header(zeroed).shapes and single_file_problem(zeroed) == ""
