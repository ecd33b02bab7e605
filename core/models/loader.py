"""Load a Stable Diffusion model offline: a diffusers folder, or a single `.safetensors`/`.ckpt` file (A1111 style).

Single files get their configs from `core/data/configs/` adapted to the sizes in the file's tensors (or from the
`tiwiz_config` metadata that `save_single_file` writes), and the bundled CLIP tokenizer. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError, pickle_refusal, without_torch_advice
from core.models.builtin import TOKENIZER_DIR, load_bundled_tokenizer
from core.models.find import family_from_text_config, folder_display_name, hf_cache_dir, is_sdxl_refiner_index
from core.models.headers import (
    SAFETENSORS_EXTS, TIWIZ_CONFIG_KEY, TORCH_EXTS, V_PRED_KEY, ZTSNR_KEY, detect_family, read_safetensors_header,
)

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


def load_model(path, device=None, dtype=None, prediction_type: str | None = None) -> LoadedModel:
    """Load a diffusers folder or a single-file checkpoint, offline.

    `prediction_type` overrides what the model says or what is guessed ("epsilon" or "v_prediction"); single SD2 files
    need it when the guess is wrong (see the README, "SD2 768 v-prediction single files"), and SDXL v-prediction files
    without the `v_pred` marker key. Weights are fp32 unless `dtype` is given.
    """
    import torch

    if prediction_type not in (None, *PREDICTION_TYPES):
        raise TiwizError(f"prediction type must be one of {', '.join(PREDICTION_TYPES)}, not {prediction_type!r}")
    path = resolve_model_path(path)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or torch.float32
    quiet_libraries()
    if path.is_dir():
        model = _load_folder(path, prediction_type)
    elif path.suffix.lower() in SAFETENSORS_EXTS + TORCH_EXTS:
        model = _load_single_file(path, prediction_type)
    else:
        raise TiwizError(f"{path}: not a model (expected a diffusers folder, .safetensors or .ckpt)")
    for module in model.modules:
        if next(module.parameters()).dtype != dtype:
            module.to(dtype=dtype)
        module.to(device)
        module.eval()
    model.device = device
    if device.type == "cuda":
        from core.models.device import enable_sdpa

        enable_sdpa(model.unet, model.vae)
    return model


def quiet_libraries() -> None:
    """No progress bars or info chatter from diffusers/transformers in our output (errors still show)."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_path(path) -> Path:
    """A local path, or a hub id (`org/name`) found in the local Hugging Face cache."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)):
        repo = hf_cache_dir() / ("models--" + str(path).replace("/", "--"))
        ref = repo / "refs" / "main"
        snaps = [repo / "snapshots" / ref.read_text().strip()] if ref.is_file() else sorted((repo / "snapshots").glob("*"))
        for snap in snaps:
            if (snap / "model_index.json").is_file():
                return snap
        raise TiwizError(f"{path}: no such file or folder, and not in the Hugging Face cache at {hf_cache_dir()} "
                         "(tiwiz works offline: download the model first)")
    raise TiwizError(f"{path}: no such file or folder")


# ---------------------------------------------------------------- diffusers folders


def _load_folder(path: Path, prediction_type: str | None) -> LoadedModel:
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
        raise TiwizError(f"{path}: cannot load the diffusers model ({type(exc).__name__}: {_first_line(exc)})") from exc
    _check_unet(unet.config, path, family)
    for module in (text_encoder, text_encoder_2, unet, vae):
        if module is not None:
            _own_storage(module)
    tokenizer = _folder_tokenizer(path, "tokenizer", family)
    if xl:
        tokenizer_2 = _folder_tokenizer(path, "tokenizer_2", family, second=True)
        _fix_pooling(text_encoder, text_encoder_2)
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
        raise TiwizError(f"{path}: cannot load {sub}/ ({_first_line(exc)})") from exc


def _fix_pooling(*encoders) -> None:
    """SDXL's published configs say eos_token_id=2, which makes transformers pool at the highest token id: with added
    placeholder tokens (ids past the vocabulary) that is the placeholder, not the end token. The end token is 49407
    in the CLIP vocabulary both encoders use; pooling there is what the original OpenCLIP model does. Plain prompts
    give the same result either way."""
    for encoder in encoders:
        inner = getattr(encoder, "text_model", encoder)
        if getattr(inner, "eos_token_id", None) == 2:
            inner.eos_token_id = 49407
            encoder.config.eos_token_id = 49407


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


def bundled_tokenizer(family: str):
    """The family's (first) tokenizer: SD2's OpenCLIP pads with "!" (id 0); SD1's and SDXL's CLIP-L with the end token.
    SDXL's second tokenizer is `load_bundled_tokenizer(second=True)`."""
    return load_bundled_tokenizer(second=(family == "sd2"))


# ---------------------------------------------------------------- single files


def _load_single_file(path: Path, prediction_type: str | None) -> LoadedModel:
    from diffusers import DDPMScheduler

    sd, metadata, kind = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
    det = detect_family(sd.keys(), shapes)
    if det.family not in ("sd1", "sd2", "sdxl") or det.note:
        raise TiwizError(f"{path}: not a usable Stable Diffusion 1.x/2.x/XL checkpoint: {det.note}")
    family = det.family
    stored = _stored_configs(metadata, path)
    if stored:
        configs, source = stored, "metadata"
    else:
        configs, source = _configs_from_tensors(path, family, shapes, "epsilon"), "default"
    if stored and prediction_type:
        configs["scheduler"]["prediction_type"] = prediction_type
    if not stored:
        pred, source = _guess_prediction_type(path, sd, family, configs, prediction_type)
        if pred != "epsilon":
            configs = _configs_from_tensors(path, family, shapes, pred)
    elif prediction_type:
        source = "override"
    elif V_PRED_KEY in sd:
        configs["scheduler"]["prediction_type"], source = "v_prediction", "key"
    if ZTSNR_KEY in sd:  # zero terminal SNR (ComfyUI's marker): rescale the betas so the last step is pure noise
        configs["scheduler"].update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    _check_unet(configs["unet"], path, family)
    parts = ("text", "text_2", "unet", "vae") if family == "sdxl" else ("text", "unet", "vae")
    built = _build_modules(path, sd, family, configs, only=parts)
    del sd
    text_encoder_2 = tokenizer_2 = None
    if family == "sdxl":
        text_encoder, text_encoder_2, unet, vae = built
        tokenizer_2 = load_bundled_tokenizer(second=True)
        _fix_pooling(text_encoder, text_encoder_2)
    else:
        text_encoder, unet, vae = built
    scheduler = DDPMScheduler.from_config(configs["scheduler"])
    return LoadedModel(
        tokenizer=bundled_tokenizer(family), text_encoder=text_encoder, unet=unet, vae=vae, noise_scheduler=scheduler,
        family=family, prediction_type=scheduler.config.prediction_type, path=path, name=path.name, device=None,
        kind=kind, prediction_source=source, tokenizer_2=tokenizer_2, text_encoder_2=text_encoder_2,
    )


def read_state_dict(path: Path) -> tuple[dict, dict, str]:
    """(state_dict, metadata, kind). Only tensors are read: safetensors, or torch files with `weights_only=True`."""
    import torch

    if path.suffix.lower() in SAFETENSORS_EXTS:
        header = read_safetensors_header(path)  # clear messages for corrupt/truncated files
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                # EMA copies (`model_ema.*`) are never used: skip them (they double the memory of full checkpoints)
                sd = {k: fh.get_tensor(k) for k in fh.keys() if not k.startswith("model_ema.")}
            return sd, header.metadata, "safetensors"
        except Exception as exc:
            raise TiwizError(f"{path}: the safetensors file is damaged ({_first_line(exc)})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = _first_line(exc)
        refusal = pickle_refusal(exc)
        if refusal:
            raise TiwizError(
                f"{path}: refused: the file contains Python objects other than tensors ({refusal}), which could run "
                "code when loaded. Nothing was executed. Use a .safetensors version of this model."
            ) from None
        raise TiwizError(f"{path}: cannot read the checkpoint: the file is corrupt or truncated "
                         f"({without_torch_advice(text)})") from exc
    if not isinstance(obj, dict):
        raise TiwizError(f"{path}: not a checkpoint (it holds a {type(obj).__name__}, not a dict of tensors)")
    if {"string_to_param", "emb_params", "emp_params"} & set(obj):
        raise TiwizError(f"{path}: not a Stable Diffusion checkpoint: a textual-inversion embedding, not a model")
    metadata = {}
    if isinstance(obj.get(TIWIZ_CONFIG_KEY), str):
        metadata[TIWIZ_CONFIG_KEY] = obj[TIWIZ_CONFIG_KEY]
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict):
        raise TiwizError(f"{path}: not a checkpoint (its state_dict is a {type(sd).__name__})")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for marker in (V_PRED_KEY, ZTSNR_KEY):  # markers may sit beside state_dict rather than in it
        if isinstance(obj.get(marker), torch.Tensor) and marker not in tensors:
            tensors[marker] = obj[marker]
    return tensors, metadata, "ckpt"


def _stored_configs(metadata: dict, path: Path) -> dict | None:
    raw = metadata.get(TIWIZ_CONFIG_KEY)
    if not raw:
        return None
    try:
        configs = json.loads(raw)
        needed = ("unet", "vae", "text_encoder", "scheduler") + (("text_encoder_2",) if configs.get("family") == "sdxl"
                                                                  else ())
        if all(isinstance(configs.get(c), dict) for c in needed):
            return configs
    except ValueError:
        pass
    raise TiwizError(f"{path}: its {TIWIZ_CONFIG_KEY} metadata is damaged")


def _configs_from_tensors(path, family, shapes, prediction_type) -> dict:
    from core.models.configs import configs_for

    try:
        return configs_for(family, shapes, prediction_type)
    except KeyError as exc:
        raise TiwizError(f"{path}: incomplete {family.upper()} checkpoint: tensor {exc.args[0]} is missing") from exc


def _check_unet(config, path, family: str = "sd1") -> None:
    if config.get("in_channels", 4) != 4:
        raise TiwizError(
            f"{path}: this UNet takes {config['in_channels']} input channels (an inpainting or instruct model); "
            "textual inversion needs a standard 4-channel model"
        )
    if (config.get("addition_embed_type") == "text_time") != (family == "sdxl"):
        raise TiwizError(f"{path}: the UNet does not match the {family.upper()} text encoders "
                         f"(addition_embed_type {config.get('addition_embed_type')!r}); the model is damaged or mixed")


def _build_modules(path: Path, sd: dict, family: str, configs: dict, only: tuple = ("text", "unet", "vae")):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from core.models.convert import text_from_original, unet_from_original, vae_from_original

    def text_config(name):
        return CLIPTextConfig(**{k: v for k, v in configs[name].items() if k not in ("architectures", "model_type")})

    built = []
    for part in only:
        with torch.device("meta"):  # no random init of weights that are about to be replaced
            if part == "text":
                label, module = "text encoder", CLIPTextModel(text_config("text_encoder"))
            elif part == "text_2":
                label, module = "second text encoder", CLIPTextModelWithProjection(text_config("text_encoder_2"))
            elif part == "unet":
                label, module = "UNet", UNet2DConditionModel.from_config(configs["unet"])
            else:
                label, module = "VAE", AutoencoderKL.from_config(configs["vae"])
        try:
            if part in ("text", "text_2"):
                weights = text_from_original(sd, family, module, second=(part == "text_2"))
            elif part == "unet":
                weights = unet_from_original(sd, configs["unet"])
            else:
                weights = vae_from_original(sd, configs["vae"])
        except (KeyError, IndexError, ValueError, RuntimeError, AttributeError) as exc:
            raise TiwizError(f"{path}: cannot convert the {label} tensors ({type(exc).__name__}: {exc}); "
                             "the file is damaged or not a standard SD checkpoint") from exc
        _assign(path, label, family, module, weights)
        if part in ("text", "text_2"):
            emb = getattr(module, "text_model", module).embeddings
            emb.position_ids = torch.arange(emb.position_embedding.weight.shape[0]).expand((1, -1))
        built.append(module)
    return built if len(built) > 1 else built[0]


def _assign(path, label, family, module, weights) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if weights.get(k) is None]
    if missing:
        raise TiwizError(f"{path}: the {label} is incomplete: {len(missing)} tensors are missing "
                         f"(first: {missing[0]}); the file is damaged or not a standard SD checkpoint")
    for k in expected:
        if tuple(weights[k].shape) != tuple(expected[k].shape):
            raise TiwizError(f"{path}: the {label} tensor {k} has shape {tuple(weights[k].shape)}, expected "
                             f"{tuple(expected[k].shape)}; this is not a standard {family.upper()} checkpoint")
    # Copy into freshly allocated fp32 storage: tensors viewed straight out of a file buffer may be unaligned, which
    # makes BLAS take other code paths (tiny numeric differences), and fp16 files become fp32 here.
    module.to_empty(device="cpu")
    module.load_state_dict({k: weights[k] for k in expected}, strict=True)


def _guess_prediction_type(path, sd: dict, family: str, configs: dict, override: str | None) -> tuple[str, str]:
    if override:
        return override, "override"
    sidecar = sidecar_prediction_type(path)
    if sidecar:
        return sidecar, "sidecar"
    if V_PRED_KEY in sd:  # ComfyUI's marker key for v-prediction checkpoints (NoobAI-XL v-pred and others)
        return "v_prediction", "key"
    if family != "sd2":
        return "epsilon", "default"
    _check_unet(configs["unet"], path, family)
    unet = _build_modules(path, sd, family, configs, only=("unet",))
    return ("v_prediction" if looks_like_v_prediction(unet) else "epsilon"), "heuristic"


def sidecar_prediction_type(path: Path) -> str | None:
    """A1111's convention: a `<checkpoint name>.yaml` (a copy of the original inference config) next to the file.
    `parameterization: "v"` in it means v-prediction."""
    yaml = path.with_suffix(".yaml")
    if not yaml.is_file():
        return None
    try:
        text = yaml.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"^\s*parameterization:\s*[\"']?(\w+)", text, re.MULTILINE)
    if m:
        return "v_prediction" if m.group(1) == "v" else "epsilon"
    return "epsilon" if re.search(r"^\s*unet_config:", text, re.MULTILINE) else None


def looks_like_v_prediction(unet) -> bool:
    """A1111's test for SD2 checkpoints: at t=999 on a flat input, a v-model's output is far below the input, an
    epsilon model's is not."""
    import torch

    with torch.no_grad():
        x = torch.ones((1, unet.config.in_channels, 8, 8)) * 0.5
        cond = torch.ones((1, 2, unet.config.cross_attention_dim)) * 0.5
        out = unet(x, torch.tensor([999]), encoder_hidden_states=cond).sample
        return (out - x).mean().item() < -1


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
