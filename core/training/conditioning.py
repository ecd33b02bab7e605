"""Per-family text conditioning for the UNet: which text encoders a family has, which vector set each one takes, and
how prompts become the UNet's conditioning.

- SD1/SD2: one encoder; the UNet takes its last hidden states (what A1111 and diffusers train with).
- SDXL: CLIP-L (`clip_l`) and OpenCLIP bigG (`clip_g`). The UNet takes the *penultimate* hidden states of both,
  concatenated along the width (768 + 1280 = 2048), plus two extra inputs (`added_cond_kwargs`): bigG's pooled,
  projected output (`text_embeds`) and six size numbers per image (`time_ids`: original height and width, crop top
  and left, target height and width), as in diffusers' `StableDiffusionXLPipeline` and SDXL's original code.

The trainer keeps one fp32 parameter [n, width_l + width_g] for SDXL: columns [:width_l] are spliced into CLIP-L,
the rest into bigG (`EncoderSlot.columns`). AdamW works element by element and norm clipping over both sets is one
global norm, so this trains exactly like two separate parameters while every save, snapshot and resume path stays
the one SD1 uses. Saving splits it into the `clip_l` and `clip_g` tensors of the SDXL file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SDXL_KEYS = ("clip_l", "clip_g")


@dataclass(frozen=True)
class EncoderSlot:
    key: str  # "clip_l" / "clip_g" for SDXL; "" for the single SD1/SD2 encoder
    tokenizer: object
    encoder: object
    width: int  # token-embedding width (768 / 1280 for real SDXL)
    columns: slice  # this encoder's columns of the trainer's vector parameter


def encoder_slots(model) -> list[EncoderSlot]:
    """The model's text encoders, in the column order of the vector parameter."""
    pairs = [("", model.tokenizer, model.text_encoder)]
    if model.family == "sdxl":
        pairs = [("clip_l", model.tokenizer, model.text_encoder), ("clip_g", model.tokenizer_2, model.text_encoder_2)]
    slots, start = [], 0
    for key, tokenizer, encoder in pairs:
        width = int(encoder.get_input_embeddings().weight.shape[1])
        slots.append(EncoderSlot(key, tokenizer, encoder, width, slice(start, start + width)))
        start += width
    return slots


def split_vectors(vectors, slots: list[EncoderSlot]) -> dict:
    """{slot key: that encoder's columns} of a [n, total width] tensor."""
    return {slot.key: vectors[:, slot.columns] for slot in slots}


def token_ids(tokenizer, prompts: list[str], device):
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids.to(device)


def encode_prompts(model, prompts: list[str], device, time_ids=None, tokenize=None):
    """(encoder_hidden_states, added_cond_kwargs) for the UNet. added_cond_kwargs is None for SD1/SD2; for SDXL it
    holds `text_embeds` and `time_ids` ([batch, 6], required). `tokenize(tokenizer, prompts, device)` replaces
    `token_ids` (the trainer's cached, non-blocking one)."""
    token_ids_for = tokenize or token_ids
    if model.family != "sdxl":
        return model.text_encoder(token_ids_for(model.tokenizer, prompts, device))[0], None
    if time_ids is None:
        raise ValueError("SDXL conditioning needs time_ids (original size, crop, target size) for every image")
    hidden, pooled = [], None
    for slot in encoder_slots(model):
        out = slot.encoder(token_ids_for(slot.tokenizer, prompts, device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        if slot.key == "clip_g":
            pooled = out.text_embeds
    cond = torch.cat(hidden, dim=-1)
    return cond, {"text_embeds": pooled, "time_ids": time_ids.to(device=device, dtype=pooled.dtype)}


def sdxl_time_ids(original_size, crop_left_top, target_size) -> list[float]:
    """SDXL's six size numbers. Sizes are given as (width, height) and the crop as (left, top), PIL's order; SDXL
    wants (height, width) and (top, left): [orig_h, orig_w, crop_top, crop_left, target_h, target_w]."""
    (ow, oh), (left, top), (tw, th) = original_size, crop_left_top, target_size
    return [float(oh), float(ow), float(top), float(left), float(th), float(tw)]
