"""What real trainers' files look like (issue 25, items 23 and 24): OneTrainer's output-embedding files whose input
vectors are all zero are refused with the reason, and diffusers' SDXL step checkpoints find their partner file."""

import pytest
import torch
from safetensors.torch import save_file

from core.embeddings.formats import load_embedding, load_sdxl_embedding
from core.errors import TiwizError

L, G = torch.randn(2, 768), torch.randn(2, 1280)


def test_onetrainer_output_embeddings_with_zero_inputs_are_refused(tmp_path):
    sdxl = tmp_path / "ot-xl.safetensors"
    save_file({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280), "clip_l_out": L, "clip_g_out": G},
              sdxl)
    with pytest.raises(TiwizError, match=r"ot-xl.safetensors.*input vectors are all zero.*output"):
        load_embedding(sdxl, family="sdxl")
    with pytest.raises(TiwizError, match="all zero"):
        load_embedding(sdxl)  # inspecting it too
    sd1 = tmp_path / "ot-sd1.safetensors"
    save_file({"emp_params": torch.zeros(3, 768), "emp_params_out": torch.randn(3, 768)}, sd1)
    with pytest.raises(TiwizError, match="all zero"):
        load_embedding(sd1, expected_dim=768)
    # Inputs that are not zero still load, with the warning that the output part is ignored.
    fine = tmp_path / "ot-fine.safetensors"
    save_file({"emp_params": torch.randn(3, 768), "emp_params_out": torch.zeros(3, 768)}, fine)
    emb = load_embedding(fine, expected_dim=768)
    assert emb.format == "onetrainer" and "emp_params_out" in emb.warnings[0]


@pytest.mark.parametrize("given", ["learned_embeds-steps-500.safetensors", "learned_embeds_2-steps-500.safetensors"])
def test_diffusers_sdxl_step_checkpoints_find_their_partner(tmp_path, given):
    save_file({"<zxq>": L}, tmp_path / "learned_embeds-steps-500.safetensors")
    save_file({"<zxq>": G}, tmp_path / "learned_embeds_2-steps-500.safetensors")
    save_file({"<zxq>": torch.randn(2, 1280)}, tmp_path / "learned_embeds_2-steps-1000.safetensors")  # another step
    emb = load_sdxl_embedding(tmp_path / given, widths=(768, 1280))
    assert emb.format == "diffusers-sdxl"
    assert torch.equal(emb.parts["clip_l"], L) and torch.equal(emb.parts["clip_g"], G)
    emb = load_sdxl_embedding(tmp_path / given)  # no widths: the `_2` file is the bigG half
    assert torch.equal(emb.parts["clip_l"], L) and torch.equal(emb.parts["clip_g"], G)
