"""Read textual-inversion embedding files in every layout users bring, safely.

Layouts: A1111 `.pt` (`string_to_param` with one entry), diffusers `{token: tensor}` (.bin/.pt/.safetensors), kohya
`{"emb_params": t}`, OneTrainer `{"emp_params": t}`, a bare tensor, and A1111 PNG embeddings carrying the
`sd-ti-embedding` text chunk. SDXL `{clip_l, clip_g}` files are recognised and refused (tiwiz trains SD1/SD2).

The file type is sniffed from its first bytes, not trusted from the extension. Pickle-based files are read only with
`torch.load(weights_only=True)`, so a file that would run code is refused before anything runs.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError

MAX_EMBEDDING_BYTES = 64 * 1024 * 1024  # real embeddings are kilobytes; anything this big is a model checkpoint
MAX_VECTORS = 75  # one CLIP chunk; A1111's slider range
FORMATS = ("a1111", "diffusers", "kohya", "onetrainer", "tensor", "a1111-png")


@dataclass
class LoadedEmbedding:
    name: str  # the trigger: stored name/token, or the file stem where the file has none
    vectors: object  # fp32 CPU tensor [n, dim]
    format: str  # one of FORMATS
    step: int | None  # training step where the file records one
    metadata: dict = field(default_factory=dict)  # str -> str provenance (safetensors metadata, A1111 fields)

    @property
    def n_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def describe_width(dim: int) -> str:
    family = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL clip_g", 2048: "SDXL"}.get(int(dim))
    return f"{dim} ({family})" if family else str(dim)


def load_embedding(path, expected_dim: int | None = None) -> LoadedEmbedding:
    """Load an embedding file; `expected_dim` (the text encoder's width) is checked when given."""
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise TiwizError(f"embedding file not found: {path}")
    if path.is_dir():
        raise TiwizError(f"{path} is a folder; pick the embedding file (.safetensors, .pt or .bin) inside it")
    kind = _sniff(path)
    if kind == "safetensors":
        obj, metadata = _read_safetensors(path)
    elif kind == "torch":
        obj, metadata = _read_torch(path), {}
    elif kind == "png":
        obj, metadata = _read_png(path), {}
    else:
        raise TiwizError(f"{path.name} is not an embedding file tiwiz can read (expected .safetensors, or a .pt/.bin "
                         "saved by torch)")
    emb = _interpret(obj, path, metadata, png=(kind == "png"))
    _check_width(emb, path, expected_dim)
    return emb


# ---- reading ----------------------------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if len(head) < 2:
        raise TiwizError(f"{path.name} is empty or truncated ({path.stat().st_size} bytes)")
    if head.startswith(b"PK\x03\x04") or head[0] == 0x80:  # torch zip archive, or a legacy torch pickle
        return "torch"
    if head.startswith(b"\x89PNG"):
        return "png"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def _read_safetensors(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            keys = list(fh.keys())
            metadata = dict(fh.metadata() or {})
            if len(keys) > 4:
                raise TiwizError(f"{path.name} holds {len(keys)} tensors, so it is not an embedding (a model "
                                 "checkpoint or LoRA?); an embedding file holds one tensor")
            tensors = {k: fh.get_tensor(k) for k in keys}
    except TiwizError:
        raise
    except Exception as exc:  # safetensors raises several types for bad headers and short files
        raise TiwizError(f"cannot read {path.name}: corrupt or truncated safetensors file ({_first_line(exc)})") from None
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _read_torch(path: Path):
    import torch

    size = path.stat().st_size
    if size > MAX_EMBEDDING_BYTES:
        raise TiwizError(f"{path.name} is {size / 2**20:.0f} MB, far too big for an embedding (a few KB); "
                         "did you pick a model checkpoint?")
    try:
        with open(path, "rb") as fh:  # a file object: torch.load would switch readers on a ".safetensors" name
            return torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TiwizError(
            f"refused to load {path.name}: it contains pickled Python objects beyond plain tensors "
            f"({_unsupported_global(exc)}), and loading those could run code. Nothing was executed. tiwiz reads only "
            "plain-tensor .pt files; if you trust the file, re-save it as .safetensors with the tool that made it."
        ) from None
    except Exception as exc:  # bad zip, short read, unknown storage type ...
        raise TiwizError(f"cannot read {path.name}: corrupt or truncated torch file ({_first_line(exc)})") from None


def _read_png(path: Path):
    """A1111 PNG embeddings: the `sd-ti-embedding` tEXt chunk (base64 JSON, tensors as {"TORCHTENSOR": list})."""
    import torch
    from PIL import Image

    try:
        with Image.open(path) as img:
            payload = getattr(img, "text", {}).get("sd-ti-embedding")
    except Exception as exc:
        raise TiwizError(f"cannot read {path.name}: {_first_line(exc)}") from None
    if not payload:
        raise TiwizError(f"{path.name} is an image without an embedding in it (no 'sd-ti-embedding' chunk); "
                         "tiwiz reads PNG embeddings that carry that chunk, and .pt/.safetensors files")

    def hook(d):
        if "TORCHTENSOR" in d:
            return torch.tensor(d["TORCHTENSOR"], dtype=torch.float32)
        return d

    try:
        return json.loads(base64.b64decode(payload), object_hook=hook)
    except Exception as exc:
        raise TiwizError(f"cannot read the embedding in {path.name}: {_first_line(exc)}") from None


# ---- interpreting -----------------------------------------------------------------------------------------------
def _interpret(obj, path: Path, metadata: dict, png: bool = False) -> LoadedEmbedding:
    import torch

    stem = path.stem
    if isinstance(obj, torch.Tensor):
        return _result(stem, obj, "tensor", None, metadata, path)
    if not isinstance(obj, dict):
        raise TiwizError(f"{path.name} holds a {type(obj).__name__}, not an embedding")
    if "string_to_param" in obj:
        params = obj["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            count = len(params) if isinstance(params, dict) else "no"
            raise TiwizError(f"{path.name}: string_to_param has {count} entries; an A1111 embedding has exactly one")
        name = obj.get("name") if isinstance(obj.get("name"), str) and obj.get("name").strip() else stem
        meta = dict(metadata)
        for key in ("sd_checkpoint", "sd_checkpoint_name"):
            if obj.get(key) is not None:
                meta[key] = str(obj[key])
        step = obj.get("step")
        step = int(step) if isinstance(step, (int, float)) and not isinstance(step, bool) else None
        return _result(name, next(iter(params.values())), "a1111-png" if png else "a1111", step, meta, path)
    if "clip_l" in obj or "clip_g" in obj:
        raise TiwizError(f"{path.name} is an SDXL embedding (clip_l + clip_g); this model is SD1/SD2, and tiwiz "
                         "trains SD1/SD2 embeddings only. Use it with an SDXL model.")
    step = _int_or_none(metadata.get("step") or metadata.get("ss_steps"))
    if "emb_params" in obj:
        return _result(stem, obj["emb_params"], "kohya", step, metadata, path)
    if "emp_params" in obj:  # OneTrainer (sic); emp_params_out, if present, is its output-side copy
        return _result(stem, obj["emp_params"], "onetrainer", step, metadata, path)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if len(obj) == 1 and len(tensors) == 1:
        token, tensor = next(iter(tensors.items()))
        return _result(str(token), tensor, "diffusers", step, metadata, path)
    keys = ", ".join(repr(k) for k in list(obj)[:6]) + (" ..." if len(obj) > 6 else "")
    raise TiwizError(f"{path.name} is not an embedding tiwiz recognises (keys: {keys}); expected one tensor, A1111's "
                     "string_to_param, kohya's emb_params or OneTrainer's emp_params")


def vector_matrix(tensor, what: str, *, nonfinite: str = "the embedding is dead (training diverged)"):
    """`tensor` as a contiguous fp32 CPU [vectors, width] copy, or a TiwizError starting with `what`; shared by
    loading (what = the file name) and saving (what = "embedding vectors")."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TiwizError(f"{what}: the embedding is a {type(tensor).__name__}, not a tensor")
    if not tensor.is_floating_point():
        raise TiwizError(f"{what}: the embedding tensor has dtype {tensor.dtype}, expected floating point")
    vec = tensor.detach().to("cpu", torch.float32)
    if vec.ndim == 1:
        vec = vec.unsqueeze(0)
    if vec.ndim != 2 or vec.shape[0] < 1 or vec.shape[1] < 1:
        raise TiwizError(f"{what}: the embedding has shape {list(tensor.shape)}, expected [vectors, width]")
    if vec.shape[0] > MAX_VECTORS:
        raise TiwizError(f"{what}: {vec.shape[0]} vectors; a prompt chunk holds at most {MAX_VECTORS}")
    if not torch.isfinite(vec).all():
        raise TiwizError(f"{what} contains NaN or infinite values: {nonfinite}")
    # clone: a view would drag its whole storage into torch.save, and safetensors refuses shared storage
    return vec.contiguous().clone()


def _result(name, tensor, fmt, step, metadata, path: Path) -> LoadedEmbedding:
    return LoadedEmbedding(name=str(name), vectors=vector_matrix(tensor, path.name), format=fmt, step=step,
                           metadata={str(k): str(v) for k, v in metadata.items()})


def _check_width(emb: LoadedEmbedding, path: Path, expected_dim: int | None) -> None:
    if expected_dim is not None and emb.dim != int(expected_dim):
        raise TiwizError(f"{path.name} is {describe_width(emb.dim)} wide but this model's text encoder is "
                         f"{describe_width(int(expected_dim))} wide; an embedding only works with the model family "
                         "it was trained for")


def _int_or_none(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _unsupported_global(exc: BaseException) -> str:
    """What the pickle asked for, without torch's advice to allow-list it."""
    import re

    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it asks for {found.group(1)}"
    found = re.search(r"Unsupported operand \S+", str(exc))
    return found.group(0) if found else "unsupported pickle content"
