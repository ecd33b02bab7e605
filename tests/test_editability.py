"""The editability signal (core.training.editability) on the tiny models' real text encoders, through the trainer's
own splice: exactly 1.0 for the init text's vectors, higher for an embedding close to them than for the same vectors
scaled x20, for SD1 and for each of SDXL's two encoders."""

import pytest
import torch

from core.models.loader import load_model
from core.training.conditioning import encoder_slots
from core.training.editability import (CONTEXT_PROMPTS, EditabilityProbe, init_text_vectors, model_encoder,
                                       vectors_in)
from train_helpers import one_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["sd1", "sdxl"])
def spliced(request, tiny_model_dir, tiny_sdxl_dir):
    """(probe, parameter, the init text's vectors) for a 2-vector embedding spliced into the model's encoders."""
    from core.training.splice import PLACEHOLDER, VectorSplice

    model = load_model(tiny_model_dir if request.param == "sd1" else tiny_sdxl_dir, device="cpu")
    slots = encoder_slots(model)
    init = init_text_vectors(slots, "dog", 2)
    parameter = torch.nn.Parameter(torch.zeros_like(init))
    tokens = [PLACEHOLDER.format(i) for i in range(2)]
    for slot in slots:
        slot.tokenizer.add_tokens(tokens)
        VectorSplice(slot.encoder, slot.tokenizer.convert_tokens_to_ids(tokens), parameter, columns=slot.columns)
    encode, tokenizers = model_encoder(model, torch.device("cpu"))
    probe = EditabilityProbe(encode, tokenizers, " ".join(tokens))
    with vectors_in(parameter, init):
        probe.set_reference()
    assert torch.equal(parameter.detach(), torch.zeros_like(init))  # vectors_in put the parameter's own values back
    return probe, parameter, init


def _measure(probe, parameter, values) -> list[float]:
    with vectors_in(parameter, values):
        return probe.measure_per_encoder()


def test_the_init_text_scores_one(spliced):
    probe, parameter, init = spliced
    assert _measure(probe, parameter, init) == pytest.approx([1.0] * len(probe.tokenizers), abs=1e-6)


def test_close_to_the_init_text_is_more_editable_than_scaled_x20(spliced):
    probe, parameter, init = spliced
    noise = torch.randn(init.shape, generator=torch.Generator().manual_seed(0))
    close = init + 0.05 * init.norm(dim=1, keepdim=True) * noise / init.shape[1] ** 0.5
    near, blown = _measure(probe, parameter, close), _measure(probe, parameter, init * 20)
    for a, b in zip(near, blown):  # every encoder on its own (SDXL: CLIP-L and bigG)
        assert a > 0.99 and b < 0.95 and a > b + 0.05, (near, blown)
    with vectors_in(parameter, close):
        assert probe.measure() == pytest.approx(sum(near) / len(near))


def test_only_the_words_after_the_concept_are_compared(spliced):
    """CLIP's encoder is causal: the tokens before the concept never change, so every prompt starts with it and the
    span covers the words after it and the end token."""
    probe, _, _ = spliced
    tokenizer = probe.tokenizers[0]
    for prompt, (start, end) in zip(probe.prompts, probe.spans[0]):
        ids = tokenizer(prompt).input_ids
        assert start == 3 and end == len(ids) and ids[-1] == tokenizer.eos_token_id
    assert len(probe.prompts) == len(CONTEXT_PROMPTS) and all(p.startswith("{}") for p in CONTEXT_PROMPTS)
