"""Torch-free reading of checkpoint headers and family detection from tensor names and shapes.

Used by `find` (in the TUI process, so no torch here, ever) and by the loader before it loads any weights.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError

SAFETENSORS_EXTS = (".safetensors",)
TORCH_EXTS = (".ckpt", ".pt", ".pth", ".bin")
MAX_HEADER_BYTES = 100 * 1024 * 1024
TIWIZ_CONFIG_KEY = "tiwiz_config"  # safetensors metadata / .ckpt top-level key holding our component configs

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # SDXL's CLIP-L (transformers layout)
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP bigG (open_clip layout, fused in_proj)
V_PRED_KEY, ZTSNR_KEY = "v_pred", "ztsnr"  # marker tensors ComfyUI/Forge honour in v-prediction SDXL derivatives


@dataclass
class SafetensorsHeader:
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]
    data_bytes: int  # bytes of tensor data the header promises


def require_regular_file(path: str | os.PathLike) -> int:
    """The file's size, or TiwizError when `path` (links followed) is not a regular file: opening a FIFO blocks
    until someone writes to it (a worker would hang where no stop reaches it), and a device never ends."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TiwizError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                or stat.S_ISBLK(st.st_mode) else "not a plain file")
        raise TiwizError(f"{path} is not a regular file ({kind}); give a model or embedding file")
    return st.st_size


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Parse the 8-byte length + JSON header. Raises TiwizError naming the file if it is not a valid, complete file."""
    path = Path(path)
    require_regular_file(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise TiwizError(f"{path}: not a safetensors file (only {size} bytes; the file is empty or truncated)")
            (n,) = struct.unpack("<Q", head)
            if n == 0 or n > MAX_HEADER_BYTES or n > size - 8:
                raise TiwizError(
                    f"{path}: not a valid safetensors file (header length {n} does not fit a {size}-byte file; "
                    "the file is corrupt, truncated, or not safetensors)"
                )
            raw = fh.read(n)
    except OSError as exc:
        raise TiwizError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    _check_nesting(path, raw)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TiwizError(f"{path}: not a valid safetensors file (the header is not readable JSON: {exc})") from exc
    metadata = header.pop("__metadata__", None) or {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    end = 0
    try:
        for key, info in header.items():
            shapes[key] = tuple(int(d) for d in info["shape"])
            dtypes[key] = str(info["dtype"])
            end = max(end, int(info["data_offsets"][1]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise TiwizError(f"{path}: not a valid safetensors file (bad tensor entry in the header)") from exc
    available = size - 8 - n
    if end > available:
        raise TiwizError(
            f"{path}: the file is truncated: its header describes {8 + n + end:,} bytes but the file has {size:,} "
            "(an interrupted download or copy? download it again)"
        )
    return SafetensorsHeader(shapes=shapes, dtypes=dtypes, metadata=dict(metadata), data_bytes=end)


MAX_HEADER_DEPTH = 16  # a real header nests 3 deep ({name: {"shape": [...]}}); json.loads recurses per level
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _check_nesting(path: Path, raw: bytes) -> None:
    """Refuse a header nested deeper than MAX_HEADER_DEPTH before json.loads (a RecursionError otherwise)."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > MAX_HEADER_DEPTH:
                raise TiwizError(f"{path}: not a valid safetensors file (its JSON header is nested too deeply, "
                                 f"over {MAX_HEADER_DEPTH} levels; the file is damaged or hostile)")
        else:
            depth -= 1


def sniff_torch_pickle_keys(path: str | os.PathLike, limit: int = 16 * 1024 * 1024) -> str | None:
    """Return the raw bytes of a torch zip checkpoint's `data.pkl` as latin-1 text (key names appear verbatim), or
    None when the file is not a readable torch zip (old-style pickles, corrupt files)."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith("data.pkl") and info.file_size <= limit:
                    return zf.read(info).decode("latin-1")
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return None
    return None


@dataclass
class Detection:
    family: str  # "sd1" | "sd2" | "sdxl" | "unknown"
    note: str = ""  # why it is not a usable SD1/SD2/SDXL checkpoint, when it is not
    width: int | None = None  # text-encoder width when known
    extra: dict = field(default_factory=dict)


def detect_family(keys, shapes: dict[str, tuple[int, ...]] | None = None) -> Detection:
    """Tell the model family from original-layout (A1111/CompVis) key names, and shapes when known."""
    keys = list(keys)
    shapes = shapes or {}
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("conditioner.embedders."):
        # A note on a known family is a reason it cannot be used.
        if not has(SDXL_CLIP_PREFIX) and has("conditioner.embedders.0.model."):
            return Detection("sdxl", "an SDXL refiner (it has no CLIP-L text encoder); train on an SDXL base model")
        if not has(UNET_PREFIX) or not has(SDXL_OPENCLIP_PREFIX) or not has(SDXL_CLIP_PREFIX):
            return Detection("sdxl", "an incomplete SDXL checkpoint (the UNet or a text encoder is missing)")
        width = _dim(shapes, SDXL_OPENCLIP_PREFIX + "token_embedding.weight", 1)
        extra = {"v_pred": V_PRED_KEY in keys, "ztsnr": ZTSNR_KEY in keys}
        return Detection("sdxl", width=width, extra=extra)
    if any(k.startswith(("joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in keys):
        return Detection("unknown", "an SD3 checkpoint (not supported)")
    if any("double_blocks." in k for k in keys[:2000]):
        return Detection("unknown", "a Flux checkpoint (not supported)")
    unet = has(UNET_PREFIX)
    if unet and has(OPENCLIP_PREFIX):
        width = _dim(shapes, OPENCLIP_PREFIX + "token_embedding.weight", 1)
        return Detection("sd2", width=width)
    if unet and has(CLIP_PREFIX):
        width = None
        for k in (CLIP_PREFIX + "text_model.embeddings.token_embedding.weight",
                  CLIP_PREFIX + "embeddings.token_embedding.weight"):
            width = width or _dim(shapes, k, 1)
        if width == 1024:
            return Detection("unknown", "an SD1-layout text encoder with width 1024 (unrecognised model)", width)
        return Detection("sd1", width=width)
    if unet:
        return Detection("unknown", "a UNet without a text encoder (not a full Stable Diffusion checkpoint)")
    if "string_to_param" in keys or "emb_params" in keys or "emp_params" in keys or (
        0 < len(keys) <= 4 and {"clip_l", "clip_g"} & set(keys)
    ):
        return Detection("unknown", "a textual-inversion embedding, not a model")
    if any("lora_" in k or ".lora_down." in k or ".lora_A." in k for k in keys[:5000]):
        return Detection("unknown", "a LoRA, not a full model")
    if has("encoder.down.") and has("decoder."):
        return Detection("unknown", "a VAE on its own, not a full model")
    if has("down_blocks.") or has("text_model.") or has("encoder.layers."):
        return Detection("unknown", "a single diffusers component, not a full checkpoint (load the whole diffusers folder)")
    return Detection("unknown", "no Stable Diffusion UNet/text-encoder tensors found")


def detect_in_pickle_text(text: str) -> Detection:
    """Cheap detection for .ckpt files from the key names visible in data.pkl (no shapes)."""
    markers = []
    for key in ("conditioner.embedders.", SDXL_CLIP_PREFIX, SDXL_OPENCLIP_PREFIX, "conditioner.embedders.0.model.",
                UNET_PREFIX, OPENCLIP_PREFIX, CLIP_PREFIX, "string_to_param", "lora_"):
        if key in text:
            markers.append(key if key == "string_to_param" else key + "x")
    markers += [k for k in (V_PRED_KEY, ZTSNR_KEY) if k in text]
    return detect_family(markers)


def _dim(shapes, key, i):
    shape = shapes.get(key)
    return int(shape[i]) if shape and len(shape) > i else None
