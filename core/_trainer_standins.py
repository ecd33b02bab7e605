"""TEMPORARY stand-ins for teammates' modules (models loader/device, embeddings, templates) until they land.
The trainer imports the real modules when they exist. Delete this file once they do."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from core.errors import TiwizError


# ---- core.models.device --------------------------------------------------------------------------------------
@dataclass
class Precision:
    autocast_dtype: object
    use_grad_scaler: bool


def pick_device(pref="auto"):
    import torch

    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def precision_for(device):
    import torch

    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, False)
        return Precision(torch.float16, True)
    return Precision(None, False)


# ---- core.models.loader --------------------------------------------------------------------------------------
class _Loaded:
    pass


def load_model(path, device=None, dtype=None):
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    path = Path(path)
    if not path.is_dir():
        raise TiwizError(f"model: {path} not found")
    pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    m = _Loaded()
    device = device or torch.device("cpu")
    for key in ("tokenizer", "text_encoder", "unet", "vae"):
        setattr(m, key, getattr(pipe, key))
    for key in ("text_encoder", "unet", "vae"):
        getattr(m, key).to(device)
    m.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    m.prediction_type = m.noise_scheduler.config.prediction_type
    m.family, m.path, m.name, m.short_hash, m.device = "sd1", path, path.name, "0000000000", device

    def make_pipeline(sampler):
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

        cls = {"euler_a": EulerAncestralDiscreteScheduler, "dpmpp_2m": DPMSolverMultistepScheduler,
               "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}[sampler]
        return StableDiffusionPipeline(vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet,
                                       scheduler=cls.from_config(pipe.scheduler.config), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)

    m.make_pipeline = make_pipeline
    return m


# ---- core.embeddings -----------------------------------------------------------------------------------------
def init_vectors(tokenizer, text_encoder, init_text, n_vectors):
    import torch

    weight = text_encoder.get_input_embeddings().weight
    ids = tokenizer(init_text or "", add_special_tokens=False).input_ids
    if not ids:
        return torch.zeros(n_vectors, weight.shape[1])
    return torch.stack([weight[ids[i * len(ids) // n_vectors]].detach().float().cpu() for i in range(n_vectors)])


def save_embedding(vectors, path_stem, *, name, step, base_model, base_hash, init_text, overwrite=False):
    import torch
    from safetensors.torch import save_file

    from core.atomic import atomic_write_with

    path_stem = Path(path_stem)
    pt, st = path_stem.with_suffix(".pt"), path_stem.with_suffix(".safetensors")
    vec = vectors.detach().float().cpu().contiguous()
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": step,
            "sd_checkpoint": base_hash, "sd_checkpoint_name": base_model}
    atomic_write_with(pt, lambda tmp: torch.save(data, tmp))
    atomic_write_with(st, lambda tmp: save_file({name: vec.clone()}, tmp, metadata={"step": str(step)}))
    return pt, st


@dataclass
class LoadedEmbedding:
    name: str
    vectors: object
    format: str
    step: int
    metadata: dict


def load_embedding(path, expected_dim=None):
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(path)
        vec = next(iter(data.values()))
    else:
        data = torch.load(path, map_location="cpu", weights_only=True)
        vec = next(iter(data["string_to_param"].values()))
    return LoadedEmbedding(path.stem, vec.float(), path.suffix, 0, {})


# ---- core.templates ------------------------------------------------------------------------------------------
_BUILTIN = {
    "style_filewords": ["a painting of [filewords], art by [name]", "a rendering of [filewords], art by [name]"],
    "style": ["a painting, art by [name]", "a rendering, art by [name]"],
    "subject_filewords": ["a photo of a [name], [filewords]", "a rendering of a [name], [filewords]"],
    "subject": ["a photo of a [name]", "a rendering of a [name]"],
    "none": ["picture"],
}


@dataclass
class Template:
    name: str
    lines: list


def load_template(name_or_path):
    p = Path(name_or_path)
    if p.is_file():
        lines = [l.strip() for l in p.read_text().splitlines() if l.strip()]
        return Template(p.stem, lines)
    if name_or_path not in _BUILTIN:
        raise TiwizError(f"template: unknown template {name_or_path!r}")
    return Template(name_or_path, _BUILTIN[name_or_path])


def render(line, name, filewords, *, shuffle_tags=False, tag_dropout=0.0, rng: random.Random):
    tags = [t.strip() for t in filewords.split(",") if t.strip()]
    if tag_dropout:
        tags = [t for t in tags if rng.random() >= tag_dropout]
    if shuffle_tags:
        rng.shuffle(tags)
    return line.replace("[name]", name).replace("[filewords]", ", ".join(tags))


def sanitize_name(name):
    import re

    return re.sub(r"[^\w.\- ]", "", name).strip() or "embedding"
