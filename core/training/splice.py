"""The trained vectors, spliced into a text encoder's token embeddings wherever their placeholder ids appear.

Placeholder tokens (`PLACEHOLDER`) are added to the tokenizer for tokenisation only; the vocabulary matrix is never
touched, so the optimizer sees the vectors alone and nothing has to be restored after a step.
"""

from __future__ import annotations

import torch

PLACEHOLDER = "<tiwiz-vec-{}>"


class VectorSplice:
    """A pre-hook maps placeholder ids (which lie past the vocabulary) to id 0 for the lookup; a forward hook replaces
    those positions with the vectors. Works for our own encoding and for a diffusers pipeline sharing the encoder."""

    def __init__(self, text_encoder, token_ids: list[int], vectors, columns: slice | None = None) -> None:
        self.vectors = vectors
        self.columns = columns or slice(None)  # SDXL: this encoder's columns of the shared parameter
        self.token_ids = torch.tensor(token_ids, dtype=torch.long)
        self._on_device = {}  # device -> token_ids there (copied once, not at every forward)
        self._hits = None
        embedding = text_encoder.get_input_embeddings()
        self._handles = [embedding.register_forward_pre_hook(self._before),
                         embedding.register_forward_hook(self._after)]

    def _before(self, module, args):
        ids = args[0]
        ids_here = self._on_device.get(ids.device)
        if ids_here is None:
            ids_here = self._on_device[ids.device] = self.token_ids.to(ids.device)
        self._hits = ids.unsqueeze(-1) == ids_here  # [batch, seq, n]
        return (ids.masked_fill(self._hits.any(-1), 0),) + tuple(args[1:])

    def _after(self, module, args, output):
        hits, self._hits = self._hits, None
        mask = hits.any(-1)
        # On a GPU, asking whether any placeholder is there waits for it; torch.where gives the same values without.
        if output.device.type == "cpu" and not bool(mask.any()):
            return output
        which = hits.long().argmax(-1)
        spliced = self.vectors[:, self.columns].to(output.dtype)[which]
        return torch.where(mask.unsqueeze(-1), spliced, output)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def splice_vectors(slots, vectors) -> tuple[list[VectorSplice], str]:
    """Add the placeholder tokens to each encoder's tokenizer and splice `vectors` (its columns per slot) into each
    encoder: (the splices, the placeholder text that stands for the vectors in a prompt)."""
    tokens = [PLACEHOLDER.format(i) for i in range(vectors.shape[0])]
    splices = []
    for slot in slots:
        slot.tokenizer.add_tokens([t for t in tokens if t not in slot.tokenizer.get_vocab()])
        splices.append(VectorSplice(slot.encoder, slot.tokenizer.convert_tokens_to_ids(tokens), vectors,
                                    columns=slot.columns))
    return splices, " ".join(tokens)
