"""A loaded Stable Diffusion model (`LoadedModel`), its inference schedulers and hashes, and what both loaders
(`folder_loader`, `file_loader`) share: the UNet check, SDXL's pooling fix, the family's bundled tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError
from core.models.builtin import load_bundled_tokenizer

SAMPLERS = ("euler_a", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "euler")
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(eq=False)
class LoadedModel:
    tokenizer: object
    text_encoder: object
    unet: object
    vae: object
    noise_scheduler: object  # DDPMScheduler with the model's training-noise config
    family: str  # "sd1" | "sd2" | "sdxl"
    prediction_type: str  # "epsilon" | "v_prediction"
    path: Path
    name: str
    device: object
    kind: str = "diffusers"  # "diffusers" | "safetensors" | "ckpt"
    # where prediction_type came from: "config" | "override" | "metadata" | "sidecar" | "key" | "heuristic" | "default"
    prediction_source: str = "config"
    _short_hash: str | None = field(default=None, repr=False)
    # SDXL only: the OpenCLIP bigG encoder (CLIPTextModelWithProjection) and its tokenizer (pads with "!")
    tokenizer_2: object = None
    text_encoder_2: object = None

    @property
    def modules(self) -> tuple:
        """Every torch module of the model (both text encoders for SDXL)."""
        return tuple(m for m in (self.text_encoder, self.text_encoder_2, self.unet, self.vae) if m is not None)

    @property
    def short_hash(self) -> str:
        """A1111's shorthash (first 10 hex digits of the file's sha256) for files; a config+sizes hash for folders."""
        if self._short_hash is None:
            self._short_hash = file_short_hash(self.path) if self.path.is_file() else folder_short_hash(self.path)
        return self._short_hash

    def make_pipeline(self, sampler: str = "euler_a"):
        """A `StableDiffusionPipeline` (SDXL: `StableDiffusionXLPipeline`) sharing this model's modules."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if self.family == "sdxl":
            pipe = StableDiffusionXLPipeline(
                vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
                scheduler=make_scheduler(sampler, self.noise_scheduler.config),
            )
            pipe.set_progress_bar_config(disable=True)
            return pipe
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=make_scheduler(sampler, self.noise_scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def make_scheduler(sampler: str, config):
    """An inference scheduler for `sampler` from the model's scheduler config."""
    from diffusers import (
        DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
    )

    config = dict(config)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler in ("dpmpp_2m", "dpmpp_2m_karras"):
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=sampler.endswith("karras"),
        )
    raise TiwizError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def file_short_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:10]


def folder_short_hash(path: str | os.PathLike) -> str:
    """Stable for a given diffusers folder: the UNet config plus the names and sizes of every weight file."""
    path = Path(path)
    h = hashlib.sha256()
    try:
        h.update(json.dumps(json.loads((path / "unet" / "config.json").read_text()), sort_keys=True).encode())
    except (OSError, ValueError):
        pass
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for f in sorted((path / sub).glob("*")):
            if f.is_file() and not f.name.endswith(".json"):
                h.update(f"{sub}/{f.name}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:10]


def bundled_tokenizer(family: str):
    """The family's (first) tokenizer: SD2's OpenCLIP pads with "!" (id 0); SD1's and SDXL's CLIP-L with the end token.
    SDXL's second tokenizer is `load_bundled_tokenizer(second=True)`."""
    return load_bundled_tokenizer(second=(family == "sd2"))


def check_unet(config, path, family: str = "sd1") -> None:
    """Refuse a UNet textual inversion cannot train with: not 4 input channels, or not of the text encoders' family."""
    if config.get("in_channels", 4) != 4:
        raise TiwizError(
            f"{path}: this UNet takes {config['in_channels']} input channels (an inpainting or instruct model); "
            "textual inversion needs a standard 4-channel model"
        )
    if (config.get("addition_embed_type") == "text_time") != (family == "sdxl"):
        raise TiwizError(f"{path}: the UNet does not match the {family.upper()} text encoders "
                         f"(addition_embed_type {config.get('addition_embed_type')!r}); the model is damaged or mixed")


def fix_pooling(*encoders) -> None:
    """SDXL's published configs say eos_token_id=2, which makes transformers pool at the highest token id: with added
    placeholder tokens (ids past the vocabulary) that is the placeholder, not the end token. The end token is 49407
    in the CLIP vocabulary both encoders use; pooling there is what the original OpenCLIP model does. Plain prompts
    give the same result either way."""
    for encoder in encoders:
        inner = getattr(encoder, "text_model", encoder)
        if getattr(inner, "eos_token_id", None) == 2:
            inner.eos_token_id = 49407
            encoder.config.eos_token_id = 49407


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
