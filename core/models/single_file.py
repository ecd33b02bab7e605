"""Write a diffusers folder as one A1111-style checkpoint (original SD key layout): `.safetensors` or `.ckpt`.

The file also carries our component configs (`tiwiz_config`), so models with non-standard sizes (like the tiny demo
model) load back exactly; A1111 and ComfyUI ignore it.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.atomic import atomic_write_with
from core.errors import TiwizError
from core.models.headers import TIWIZ_CONFIG_KEY, V_PRED_KEY, ZTSNR_KEY

TEXT_CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "projection_dim", "num_hidden_layers", "num_attention_heads",
    "max_position_embeddings", "hidden_act", "layer_norm_eps", "attention_dropout", "dropout", "initializer_range",
    "initializer_factor", "pad_token_id", "bos_token_id", "eos_token_id",
)
ARCHITECTURE = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2", "sdxl": "stable-diffusion-xl-v1-base"}


def original_state_dict(model) -> dict:
    """The original-layout state dict of a `LoadedModel`."""
    from core.models.convert import text_to_original, unet_to_original, vae_to_original

    sd = {}
    sd.update(unet_to_original(model.unet.state_dict(), model.unet.config))
    sd.update(vae_to_original(model.vae.state_dict(), model.vae.config))
    sd.update(text_to_original(model.text_encoder.state_dict(), model.family))
    if model.family == "sdxl":
        sd.update(text_to_original(model.text_encoder_2.state_dict(), model.family, second=True))
        if model.prediction_type == "v_prediction":  # the marker ComfyUI and Forge read
            import torch

            sd[V_PRED_KEY] = torch.tensor([])
        if model.noise_scheduler.config.get("rescale_betas_zero_snr"):
            import torch

            sd[ZTSNR_KEY] = torch.tensor([])
    return sd


def model_configs(model) -> dict:
    clean = lambda cfg: {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # noqa: E731
    text = lambda encoder: {k: v for k, v in encoder.config.to_dict().items() if k in TEXT_CONFIG_KEYS}  # noqa: E731
    configs = {
        "family": model.family,
        "unet": clean(model.unet.config),
        "vae": clean(model.vae.config),
        "text_encoder": text(model.text_encoder),
        "scheduler": clean(model.noise_scheduler.config),
    }
    if model.text_encoder_2 is not None:
        configs["text_encoder_2"] = text(model.text_encoder_2)
    return configs


def save_single_file(model_dir, out_path, *, half: bool = False, overwrite: bool = False) -> Path:
    """Convert a diffusers folder (or a `LoadedModel`) to one checkpoint file. The suffix picks the format:
    `.safetensors` (recommended) or `.ckpt` (a torch zip holding only tensors and strings, `weights_only`-safe)."""
    import torch

    from core.models.loaded_model import LoadedModel
    from core.models.loader import load_model

    out_path = Path(out_path)
    suffix = out_path.suffix.lower()
    if suffix not in (".safetensors", ".ckpt"):
        raise TiwizError(f"{out_path}: the output must end in .safetensors or .ckpt")
    if out_path.exists() and not overwrite:
        raise TiwizError(f"{out_path}: already exists (pass --overwrite to replace it)")
    model = model_dir if isinstance(model_dir, LoadedModel) else load_model(model_dir)
    dtype = torch.float16 if half else torch.float32
    sd = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous().clone()
          for k, v in original_state_dict(model).items()}
    configs = json.dumps(model_configs(model), default=_jsonable)
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {"format": "pt", TIWIZ_CONFIG_KEY: configs,
                    "modelspec.architecture": ARCHITECTURE.get(model.family, model.family)}
        atomic_write_with(out_path, lambda tmp: save_file(sd, tmp, metadata=metadata))
    else:
        atomic_write_with(out_path, lambda tmp: torch.save({"state_dict": sd, TIWIZ_CONFIG_KEY: configs}, tmp))
    return out_path


def _jsonable(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)
