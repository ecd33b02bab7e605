"""Load a diffusers folder (model_index.json, one subfolder per part) offline, fp16-only variants included."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import TiwizError
from core.models.builtin import load_bundled_tokenizer
from core.models.find import family_from_text_config, folder_display_name, is_sdxl_refiner_index
from core.models.loaded_model import LoadedModel, bundled_tokenizer, check_unet, first_line, fix_pooling


def load_folder(path: Path, prediction_type: str | None) -> LoadedModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    index = _read_json(path / "model_index.json", path) if (path / "model_index.json").exists() else {}
    xl = "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index
    if xl and is_sdxl_refiner_index(index):
        raise TiwizError(f"{path}: an SDXL refiner (it has no CLIP-L text encoder); train on an SDXL base model")
    for sub in ("unet", "vae", "text_encoder", "scheduler") + (("text_encoder_2",) if xl else ()):
        if not (path / sub).is_dir():
            raise TiwizError(f"{path}: not a complete diffusers Stable Diffusion folder (no {sub}/ folder)")
    te_config = _read_json(path / "text_encoder" / "config.json", path)
    family = "sdxl" if xl else family_from_text_config(te_config)
    kw = {"local_files_only": True}
    text_encoder_2 = tokenizer_2 = None
    try:
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw, **_variant(path / "text_encoder"))
        if xl:
            text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                path / "text_encoder_2", **kw, **_variant(path / "text_encoder_2"))
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw, **_variant(path / "unet"))
        vae = AutoencoderKL.from_pretrained(path / "vae", **kw, **_variant(path / "vae"))
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", **kw)
    except TiwizError:
        raise
    except Exception as exc:  # diffusers/transformers raise many types for broken folders
        raise TiwizError(f"{path}: cannot load the diffusers model ({type(exc).__name__}: {first_line(exc)})") from exc
    check_unet(unet.config, path, family)
    for module in (text_encoder, text_encoder_2, unet, vae):
        if module is not None:
            _own_storage(module)
    tokenizer = _folder_tokenizer(path, "tokenizer", family)
    if xl:
        tokenizer_2 = _folder_tokenizer(path, "tokenizer_2", family, second=True)
        fix_pooling(text_encoder, text_encoder_2)
    source = "config"
    if prediction_type:
        source = "override"
        scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    return LoadedModel(
        tokenizer=tokenizer, text_encoder=text_encoder, unet=unet, vae=vae, noise_scheduler=scheduler, family=family,
        prediction_type=scheduler.config.prediction_type, path=path, name=folder_display_name(path), device=None,
        kind="diffusers", prediction_source=source, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2,
    )


def _folder_tokenizer(path: Path, sub: str, family: str, second: bool = False):
    from transformers import CLIPTokenizer

    if not (path / sub).is_dir():
        return load_bundled_tokenizer(second=True) if second else bundled_tokenizer(family)
    try:
        return CLIPTokenizer.from_pretrained(path / sub, local_files_only=True)
    except Exception as exc:
        raise TiwizError(f"{path}: cannot load {sub}/ ({first_line(exc)})") from exc


def _own_storage(module) -> None:
    """Give every tensor its own freshly allocated storage. Tensors viewed straight out of a (memory-mapped) file may
    be unaligned, which makes BLAS take other code paths: a folder and the same weights in one file would then give
    slightly different outputs."""
    import torch

    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            p.data = p.data.clone()


def _variant(sub: Path) -> dict:
    """Folders that only ship `*.fp16.safetensors` weights need `variant="fp16"`."""
    names = [f.name for f in sub.glob("*")]
    plain = any(re.fullmatch(r"(diffusion_pytorch_model|model)\.(safetensors|bin)", n) for n in names)
    if not plain and any(".fp16." in n for n in names):
        return {"variant": "fp16"}
    return {}


def _read_json(file: Path, model: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TiwizError(f"{model}: cannot read {file.name} ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise TiwizError(f"{model}: {file.relative_to(model) if file.is_relative_to(model) else file} is not valid "
                         f"JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TiwizError(f"{model}: {file.name} is not a JSON object")
    return data
