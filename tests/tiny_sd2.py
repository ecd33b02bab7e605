"""A tiny SD2-shaped model (OpenCLIP-style text encoder, linear attention projections, "!" padding), for tests of the
SD2 code paths (v-prediction included). Random weights; an ordinary diffusers folder."""

from __future__ import annotations

import os
from pathlib import Path

from core.models.builtin import SD15_SCHEDULER, TINY_UNET, TINY_VAE, TOKENIZER_DIR


def build_tiny_sd2_components(seed: int = 0, prediction_type: str = "v_prediction"):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**{**TINY_UNET, "attention_head_dim": (2, 4), "use_linear_projection": True})
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**TINY_VAE)
    scheduler = DDPMScheduler(**SD15_SCHEDULER, prediction_type=prediction_type)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")
    return text_encoder, unet, vae, scheduler, tokenizer


def write_tiny_sd2_model(dest: str | os.PathLike, seed: int = 0, prediction_type: str = "v_prediction") -> Path:
    from diffusers import StableDiffusionPipeline

    text_encoder, unet, vae, scheduler, tokenizer = build_tiny_sd2_components(seed, prediction_type)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    dest = Path(dest)
    pipe.save_pretrained(dest, safe_serialization=True)
    return dest
