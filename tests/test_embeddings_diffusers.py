"""Our two output files load in diffusers' StableDiffusionPipeline.load_textual_inversion on the tiny model."""

import pytest
import torch
from diffusers import StableDiffusionPipeline

from core.embeddings.vectors import init_vectors, save_embedding, trigger_problems

PROMPT = "a photo of zxqstyle on a table"


def _pipe(model_dir):
    return StableDiffusionPipeline.from_pretrained(model_dir, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)


def _encode(pipe, prompt):
    ids = pipe.tokenizer(prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids[0], pipe.text_encoder(ids)[0][0]


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory):
    pipe = _pipe(tiny_model_dir)
    assert trigger_problems(pipe.tokenizer, "zxqstyle", 3) == []
    vec = init_vectors(pipe.tokenizer, pipe.text_encoder, "red blue", 3) + 0.05 * torch.randn(3, 32)
    pt, st = save_embedding(vec, tmp_path_factory.mktemp("emb") / "zxqstyle", name="zxqstyle", step=10,
                            base_model="tiny", base_hash="abc", init_text="red blue")
    _, base = _encode(pipe, PROMPT)
    return vec, pt, st, base


@pytest.mark.parametrize("which", ["pt", "safetensors"])
def test_diffusers_loads_our_file(tiny_model_dir, saved, which):
    vec, pt, st, base = saved
    pipe = _pipe(tiny_model_dir)
    pipe.load_textual_inversion(str(pt if which == "pt" else st))
    tokens = ["zxqstyle", "zxqstyle_1", "zxqstyle_2"]
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert pipe.tokenizer.unk_token_id not in ids
    rows = pipe.text_encoder.get_input_embeddings().weight.detach()[ids]
    assert torch.equal(rows, vec)

    converted = pipe.maybe_convert_prompt(PROMPT, pipe.tokenizer)
    assert "zxqstyle zxqstyle_1 zxqstyle_2" in converted
    token_ids, emb = _encode(pipe, converted)
    pos = token_ids.tolist().index(ids[0])
    assert token_ids[pos:pos + 3].tolist() == ids
    assert emb.shape == base.shape
    assert not torch.allclose(emb, base, atol=1e-4)
    # the words before the trigger are encoded as before (causal attention): the change comes from our vectors
    assert torch.allclose(emb[:pos], base[:pos], atol=1e-5)


def test_diffusers_refuses_what_we_flag(tiny_model_dir):
    pipe = _pipe(tiny_model_dir)
    (problem,) = trigger_problems(pipe.tokenizer, "cat")
    with pytest.raises(ValueError, match="already in tokenizer vocabulary"):
        pipe.load_textual_inversion({"cat": torch.zeros(1, 32)})
