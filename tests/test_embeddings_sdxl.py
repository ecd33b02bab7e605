"""SDXL embedding files: our `{clip_l, clip_g}` writer, reading every SDXL layout users bring (the one-file format,
diffusers' two files as a pair or found beside each other), OneTrainer's `_out` keys, and cross-family refusals."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.embeddings.formats import load_embedding, load_sdxl_embedding
from core.embeddings.vectors import save_sdxl_embedding
from core.errors import TiwizError

L, G = torch.randn(2, 768), torch.randn(2, 1280)


def test_written_file_has_exactly_clip_l_and_clip_g_and_string_metadata(tmp_path):
    path = save_sdxl_embedding(L, G, tmp_path / "zxq-style", name="zxq-style", step=40, base_model="pony.safetensors",
                               base_hash="0123456789", init_text="style")
    assert path == tmp_path / "zxq-style.safetensors" and not (tmp_path / "zxq-style.pt").exists()
    with safe_open(str(path), framework="pt") as fh:
        assert sorted(fh.keys()) == ["clip_g", "clip_l"]
        assert torch.equal(fh.get_tensor("clip_l"), L) and torch.equal(fh.get_tensor("clip_g"), G)
        meta = fh.metadata()
    assert all(isinstance(v, str) for v in meta.values())
    assert (meta["name"], meta["step"], meta["base_model"], meta["vectors"]) == ("zxq-style", "40", "pony.safetensors",
                                                                               "2")
    back = load_embedding(path, family="sdxl", widths=(768, 1280))
    assert (back.format, back.family, back.n_vectors, back.step) == ("sdxl", "sdxl", 2, 40)
    assert torch.equal(back.parts["clip_l"], L) and torch.equal(back.parts["clip_g"], G)
    with pytest.raises(TiwizError, match="already exists"):
        save_sdxl_embedding(L, G, tmp_path / "zxq-style", name="x", step=1, base_model="", base_hash=None,
                            init_text="")
    with pytest.raises(TiwizError, match="same number"):
        save_sdxl_embedding(L, G[:1], tmp_path / "uneven", name="x", step=1, base_model="", base_hash=None,
                            init_text="")


def test_diffusers_two_files_as_a_pair_or_found_beside_each_other(tmp_path):
    save_file({"<zxq>": L}, tmp_path / "learned_embeds.safetensors")
    save_file({"<zxq>": G}, tmp_path / "learned_embeds_2.safetensors")
    for spec in (tmp_path / "learned_embeds.safetensors", tmp_path / "learned_embeds_2.safetensors",
                 [tmp_path / "learned_embeds_2.safetensors", tmp_path / "learned_embeds.safetensors"],
                 f"{tmp_path / 'learned_embeds.safetensors'},{tmp_path / 'learned_embeds_2.safetensors'}"):
        emb = load_sdxl_embedding(spec, widths=(768, 1280))
        assert emb.format == "diffusers-sdxl" and emb.name == "<zxq>"
        assert torch.equal(emb.parts["clip_l"], L) and torch.equal(emb.parts["clip_g"], G)


def test_onetrainer_out_keys_are_ignored_with_a_warning_or_refused_alone(tmp_path):
    path = tmp_path / "ot.safetensors"
    save_file({"clip_l": L, "clip_g": G, "clip_l_out": L.clone(), "clip_g_out": G.clone()}, path)
    emb = load_embedding(path, family="sdxl")
    assert torch.equal(emb.parts["clip_g"], G)
    assert len(emb.warnings) == 1 and "clip_g_out, clip_l_out" in emb.warnings[0]
    sd1 = tmp_path / "ot-sd1.safetensors"
    save_file({"emp_params": torch.randn(3, 768), "emp_params_out": torch.randn(3, 768)}, sd1)
    emb = load_embedding(sd1, expected_dim=768)
    assert emb.format == "onetrainer" and "emp_params_out" in emb.warnings[0]
    only = tmp_path / "only-out.safetensors"
    save_file({"clip_l_out": L, "clip_g_out": G}, only)
    with pytest.raises(TiwizError, match="only OneTrainer output embeddings"):
        load_embedding(only, family="sdxl")


def test_cross_family_errors_name_both_families(tmp_path):
    xl = tmp_path / "xl.safetensors"
    save_file({"clip_l": L, "clip_g": G}, xl)
    with pytest.raises(TiwizError, match="SDXL embedding.*this model is SD1.x"):
        load_embedding(xl, expected_dim=768, family="sd1")
    sd1 = tmp_path / "cat.safetensors"
    save_file({"cat": torch.randn(2, 768)}, sd1)
    with pytest.raises(TiwizError, match=r"SD1/SD2-style embedding\), but this model is SDXL"):
        load_embedding(sd1, family="sdxl", widths=(768, 1280))
    with pytest.raises(TiwizError, match="768/1280 wide but this model's text encoders are 32/64"):
        load_embedding(xl, family="sdxl", widths=(32, 64))
    half = tmp_path / "half.safetensors"
    save_file({"clip_l": L}, half)
    with pytest.raises(TiwizError, match="no clip_g"):
        load_embedding(half, family="sdxl")
