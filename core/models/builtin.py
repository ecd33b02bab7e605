"""The tiny SD1-shaped demo model: our embedded default and our test model. An ordinary diffusers folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "data" / "clip_tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


# The tiny SD-shaped architecture (shared with tiny_sd2) and the SD1.5 noise schedule.
TINY_UNET = dict(
    sample_size=16, block_out_channels=(32, 64), layers_per_block=1, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=1, norm_num_groups=32, sample_size=64,
)
SD15_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    clip_sample=False, steps_offset=1,
)


def copy_clip_tokenizer(dest: str | os.PathLike) -> Path:
    """Copy the bundled real CLIP tokenizer files into `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copyfile(TOKENIZER_DIR / name, dest / name)
    return dest


def build_tiny_components(seed: int = 0):
    """Return (text_encoder, unet, vae, scheduler, tokenizer) with random weights drawn deterministically from `seed`."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**TINY_UNET)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(**TINY_VAE)
    scheduler = DDPMScheduler(**SD15_SCHEDULER, prediction_type="epsilon")
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    return text_encoder, unet, vae, scheduler, tokenizer


def write_random_demo_model(dest: str | os.PathLike, seed: int = 0) -> Path:
    """Write the tiny random-weight model as a diffusers folder. Same seed, same bytes of weights."""
    from diffusers import StableDiffusionPipeline

    text_encoder, unet, vae, scheduler, tokenizer = build_tiny_components(seed)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    dest = Path(dest)
    pipe.save_pretrained(dest, safe_serialization=True)
    copy_clip_tokenizer(dest / "tokenizer")
    return dest


WORLD_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "world_model"
WORLD_MODEL_FILES = (
    "model_index.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
)


def write_demo_model(dest: str | os.PathLike, seed: int = 0, random: bool = False) -> Path:
    """Write the demo model as an ordinary diffusers folder: by default the shipped "shapes world" weights (trained by
    tools/train_world.py; `seed` is then unused), or with `random=True` the random-weight tiny model from `seed`."""
    if random:
        return write_random_demo_model(dest, seed=seed)
    from core.atomic import atomic_write_with
    from core.errors import TiwizError

    missing = [name for name in WORLD_MODEL_FILES if not (WORLD_MODEL_DIR / name).is_file()]
    if missing:
        raise TiwizError(
            f"the shipped demo model is incomplete ({WORLD_MODEL_DIR / missing[0]} is missing); reinstall tiwiz, "
            "or use the random-weight model (`tiwiz demo-model DIR --random`)"
        )
    dest = Path(dest)
    for name in WORLD_MODEL_FILES:
        atomic_write_with(dest / name, lambda tmp, src=WORLD_MODEL_DIR / name: shutil.copyfile(src, tmp))
    copy_clip_tokenizer(dest / "tokenizer")
    return dest
