"""The tiny SD1-shaped demo model: our embedded default and our test model. An ordinary diffusers folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "data" / "clip_tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")
# SDXL's second (OpenCLIP bigG) tokenizer: the same BPE files, padded with "!" (id 0). Only its two small config files
# differ, so only those are bundled in clip_tokenizer_2/.
TOKENIZER_2_DIR = TOKENIZER_DIR.parent / "clip_tokenizer_2"
TOKENIZER_2_OWN_FILES = ("tokenizer_config.json", "special_tokens_map.json")


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


def copy_clip_tokenizer(dest: str | os.PathLike, second: bool = False) -> Path:
    """Copy the bundled real CLIP tokenizer files into `dest` (`second=True`: SDXL's `tokenizer_2`, padded with "!")."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        src = TOKENIZER_2_DIR if second and name in TOKENIZER_2_OWN_FILES else TOKENIZER_DIR
        shutil.copyfile(src / name, dest / name)
    return dest


def load_bundled_tokenizer(second: bool = False):
    """The bundled CLIP tokenizer; `second=True` gives SDXL's `tokenizer_2` (same BPE, pad token "!")."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!") if second else \
        CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


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
    return _save_pipeline(pipe, Path(dest))


# The tiny SDXL-shaped architecture: CLIP-L stand-in 32 wide, bigG stand-in 64 wide with a projection (so the two
# vector sets have different widths, like 768/1280), a text-time UNet whose cross-attention takes both (32 + 64).
# Every head is 64 wide (or one head), as in SDXL, so a single file of it loads from its tensor shapes alone.
TINY_SDXL_TE1 = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=1, num_hidden_layers=2,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
TINY_SDXL_TE2 = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=73, num_attention_heads=1, num_hidden_layers=3,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=64,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=0,
)
TINY_SDXL_UNET = dict(
    sample_size=16, block_out_channels=(64, 128), layers_per_block=1, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=96, attention_head_dim=(1, 2), use_linear_projection=True, norm_num_groups=32,
    transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 64,
)


def build_tiny_sdxl_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """The tiny SDXL pipeline's components (random weights from `seed`), keyed like `StableDiffusionXLPipeline`."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_SDXL_TE1))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_SDXL_TE2))
    torch.manual_seed(seed + 2)
    unet = UNet2DConditionModel(**TINY_SDXL_UNET)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.13025})
    scheduler = DDPMScheduler(**SD15_SCHEDULER, prediction_type=prediction_type)
    return dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=unet, scheduler=scheduler,
                tokenizer=load_bundled_tokenizer(), tokenizer_2=load_bundled_tokenizer(second=True))


def write_tiny_sdxl_model(dest: str | os.PathLike, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write the tiny random-weight SDXL-shaped model as a diffusers folder (both encoders, both tokenizers)."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**build_tiny_sdxl_components(seed, prediction_type))
    return _save_pipeline(pipe, Path(dest), sdxl=True)


def _save_pipeline(pipe, dest: Path, sdxl: bool = False) -> Path:
    """`pipe` as a diffusers folder at `dest` with the bundled tokenizer files: staged elsewhere, then every file
    written atomically with the umask's mode (safetensors' writer makes its files 0600), model_index.json last (a
    folder without it was not fully written)."""
    import tempfile

    from core.atomic import atomic_write_with, sync_folder

    with tempfile.TemporaryDirectory(prefix="tiwiz-model-") as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        copy_clip_tokenizer(Path(staging) / "tokenizer")
        if sdxl:
            copy_clip_tokenizer(Path(staging) / "tokenizer_2", second=True)
        files = sorted((p for p in Path(staging).rglob("*") if p.is_file()), key=lambda p: p.name == "model_index.json")
        for src in files:
            atomic_write_with(dest / src.relative_to(staging), lambda tmp, src=src: shutil.copyfile(src, tmp),
                              sync_dir=False)
        for folder in {(dest / src.relative_to(staging)).parent for src in files}:
            sync_folder(folder)
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
