"""Load a single-file checkpoint (A1111 style `.safetensors` or `.ckpt`) offline: read only its tensors, take the
configs from the `tiwiz_config` metadata or adapt the bundled ones to the tensors' sizes, work out the prediction
type, and convert the original keys to diffusers modules."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.errors import TiwizError, pickle_refusal, without_torch_advice
from core.models.builtin import load_bundled_tokenizer
from core.models.headers import (
    SAFETENSORS_EXTS, TIWIZ_CONFIG_KEY, V_PRED_KEY, ZTSNR_KEY, detect_family, read_safetensors_header,
)
from core.models.loaded_model import LoadedModel, bundled_tokenizer, check_unet, first_line, fix_pooling


def load_single_file(path: Path, prediction_type: str | None) -> LoadedModel:
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
    check_unet(configs["unet"], path, family)
    parts = ("text", "text_2", "unet", "vae") if family == "sdxl" else ("text", "unet", "vae")
    built = _build_modules(path, sd, family, configs, only=parts)
    del sd
    text_encoder_2 = tokenizer_2 = None
    if family == "sdxl":
        text_encoder, text_encoder_2, unet, vae = built
        tokenizer_2 = load_bundled_tokenizer(second=True)
        fix_pooling(text_encoder, text_encoder_2)
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
            raise TiwizError(f"{path}: the safetensors file is damaged ({first_line(exc)})") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = first_line(exc)
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
    check_unet(configs["unet"], path, family)
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
