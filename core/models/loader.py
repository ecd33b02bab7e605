"""Load a Stable Diffusion model offline: a diffusers folder, or a single `.safetensors`/`.ckpt` file (A1111 style).

Single files get their configs from `core/data/configs/` adapted to the sizes in the file's tensors (or from the
`tiwiz_config` metadata that `save_single_file` writes), and the bundled CLIP tokenizer. Nothing touches the network.
"""

from __future__ import annotations

import re
from pathlib import Path

from core.errors import TiwizError
from core.models.file_loader import load_single_file
from core.models.find import hf_cache_dir
from core.models.folder_loader import load_folder
from core.models.headers import SAFETENSORS_EXTS, TORCH_EXTS
from core.models.loaded_model import PREDICTION_TYPES, LoadedModel


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
        model = load_folder(path, prediction_type)
    elif path.suffix.lower() in SAFETENSORS_EXTS + TORCH_EXTS:
        model = load_single_file(path, prediction_type)
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

