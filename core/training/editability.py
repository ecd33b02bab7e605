"""The editability signal: does the embedding still let the rest of a prompt speak? Text encoder only, no sampling.

CoRe (Wu et al., "Context-Regularized Text Embedding Learning for Text-to-Image Personalization", arXiv 2408.15914)
observes that an over-fitted embedding changes the text encoder's outputs of the *context* words around it ("in the
desert", "oil painting"), and that comparing them with the outputs next to a word the model knows is a cheap proxy
for whether prompts still work. Here: a few fixed context prompts, each once with the embedding and once with the
init text in its place; the signal is the mean cosine similarity between the two, over the context tokens (the
words after the concept and the end token) and over the text encoders (SDXL: CLIP-L and bigG each count once).

The init text is taken as the run starts from it: its token embeddings laid out over the run's vectors (A1111's
init semantics, `core.embeddings.vectors.init_vectors`), so both prompts have the same tokens and positions, and an
untrained embedding scores exactly 1.0. An inflated or runaway vector drags the context's outputs away and lowers it. CLIP's text encoder is causal, so tokens *before* the concept never change:
every prompt starts with the concept, and only what follows is compared. Padding is left out.
"""

from __future__ import annotations

import contextlib
from typing import Callable

CONTEXT_PROMPTS = (
    "{} in the desert",
    "{} floating in outer space",
    "{} on a wooden table, oil painting",
    "{} in the snow at night, photograph",
)


def context_span(tokenizer, prompt: str, concept_tokens: int) -> tuple[int, int]:
    """(start, end) of the tokens after the concept, the end token included, in `prompt`'s token ids."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    end = len(ids)  # BOS ... EOS, no padding
    return min(1 + concept_tokens, end - 1), end


class EditabilityProbe:
    """Measures the signal for whatever `concept_text` means to `encode` when called (the trainer's spliced vectors,
    or a pipeline's bound tokens).

    `encode(prompts)` returns one tensor [len(prompts), tokens, width] per text encoder; `tokenizers` holds the
    matching tokenizers. `set_reference()` records the outputs to compare with: call it while the concept holds the
    init text's vectors (`vectors_in`)."""

    def __init__(self, encode: Callable, tokenizers: list, concept_text: str,
                 prompts: tuple[str, ...] = CONTEXT_PROMPTS) -> None:
        self.encode, self.tokenizers = encode, list(tokenizers)
        self.prompts = [p.format(concept_text) for p in prompts]
        n_concept = len(concept_text.split())
        self.spans = [[context_span(tok, p, n_concept) for p in self.prompts] for tok in self.tokenizers]
        self.reference: list | None = None
        self.last: float | None = None  # the latest measure

    def _context(self) -> list:
        import torch

        with torch.no_grad():
            outputs = self.encode(self.prompts)
        return [[out[i, s:e].float() for i, (s, e) in enumerate(spans)] for out, spans in zip(outputs, self.spans)]

    def set_reference(self) -> None:
        self.reference = self._context()

    def measure_per_encoder(self) -> list[float]:
        """The signal of each text encoder."""
        import torch
        import torch.nn.functional as F

        if self.reference is None:
            raise RuntimeError("set_reference() first")
        values = []
        for ours, refs in zip(self._context(), self.reference):
            cosines = [F.cosine_similarity(a, b.to(a.device), dim=-1) for a, b in zip(ours, refs)]
            values.append(float(torch.cat(cosines).mean()))
        return values

    def measure(self) -> float:
        """The mean over the text encoders (also kept as `last`)."""
        values = self.measure_per_encoder()
        self.last = sum(values) / len(values)
        return self.last


@contextlib.contextmanager
def vectors_in(parameter, values):
    """`values` in `parameter` for the duration, its own values back afterwards."""
    import torch

    saved = parameter.detach().clone()
    with torch.no_grad():
        parameter.copy_(values.to(parameter.device, parameter.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            parameter.copy_(saved)


def init_text_vectors(slots, init_text: str, n_vectors: int):
    """The init text laid out over `n_vectors` vectors for each encoder slot, side by side (the trainer's layout)."""
    import torch

    from core.embeddings.vectors import init_vectors

    return torch.cat([init_vectors(s.tokenizer, s.encoder, init_text, n_vectors).float() for s in slots], dim=1)


def model_encoder(model, device, autocast: Callable | None = None) -> tuple[Callable, list]:
    """(`encode`, tokenizers) for a loaded model (core.models.loader): the hidden states the UNet is conditioned on
    (core.training.conditioning.encode_prompts), split per text encoder."""
    import torch

    from core.training.conditioning import encode_prompts, encoder_slots

    slots = encoder_slots(model)

    def encode(prompts: list[str]):
        time_ids = torch.zeros(len(prompts), 6) if model.family == "sdxl" else None  # the pooled part is not used
        with (autocast() if autocast else contextlib.nullcontext()):
            cond, _ = encode_prompts(model, prompts, device, time_ids)
        return [cond[..., slot.columns] for slot in slots]

    return encode, [slot.tokenizer for slot in slots]


def pipeline_encoder(pipe) -> tuple[Callable, list]:
    """(`encode`, tokenizers) for an SD1/SD2 diffusers pipeline (the benchmark's): the last hidden states."""
    from core.training.conditioning import token_ids

    def encode(prompts: list[str]):
        ids = token_ids(pipe.tokenizer, prompts, pipe.text_encoder.device)
        return [pipe.text_encoder(ids)[0]]

    return encode, [pipe.tokenizer]


def run_probe(model, slots, parameter, placeholder: str, init_text: str, device,
              autocast: Callable | None = None) -> EditabilityProbe:
    """The probe of a training run: its model's encoders with the run's splice (`parameter` behind `placeholder`),
    the reference taken with the init text's vectors in the parameter (its own values back afterwards)."""
    encode, tokenizers = model_encoder(model, device, autocast)
    probe = EditabilityProbe(encode, tokenizers, placeholder)
    with vectors_in(parameter, init_text_vectors(slots, init_text, int(parameter.shape[0]))):
        probe.set_reference()
    return probe
