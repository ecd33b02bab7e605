"""Read textual-inversion embedding files in every layout users bring, safely.

Layouts: A1111 `.pt` (`string_to_param` with one entry), diffusers `{token: tensor}` (.bin/.pt/.safetensors), kohya
`{"emb_params": t}`, OneTrainer `{"emp_params": t}`, a bare tensor, and A1111 PNG embeddings carrying the
`sd-ti-embedding` text chunk. SDXL (`family="sdxl"`): the one-file `{clip_l, clip_g}` layout (kohya, OneTrainer,
ai-toolkit, tiwiz) and diffusers' two files (`learned_embeds.safetensors` + `learned_embeds_2.safetensors`, given as
a pair or found beside each other). OneTrainer's output-side copies (`*_out` keys) are ignored with a warning.
An embedding of the other family is refused with a message naming both.

The file type is sniffed from its first bytes, not trusted from the extension. Pickle-based files are read only with
`torch.load(weights_only=True)`, so a file that would run code is refused before anything runs.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import TiwizError

MAX_EMBEDDING_BYTES = 64 * 1024 * 1024  # real embeddings are kilobytes; anything this big is a model checkpoint
MAX_VECTORS = 75  # one CLIP chunk; A1111's slider range
FORMATS = ("a1111", "diffusers", "kohya", "onetrainer", "tensor", "a1111-png", "sdxl", "diffusers-sdxl")
SDXL_PARTS = ("clip_l", "clip_g")
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


@dataclass
class LoadedEmbedding:
    name: str  # the trigger: stored name/token, or the file stem where the file has none
    vectors: object  # fp32 CPU tensor [n, dim]
    format: str  # one of FORMATS
    step: int | None  # training step where the file records one
    metadata: dict = field(default_factory=dict)  # str -> str provenance (safetensors metadata, A1111 fields)
    # SDXL: {"clip_l": [n, 768], "clip_g": [n, 1280]}; `vectors` is then both side by side [n, 2048]. {} otherwise.
    parts: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)  # things ignored while reading (OneTrainer `_out` keys)

    @property
    def family(self) -> str | None:
        """"sdxl" for two-part files, else None (an SD1/SD2 file's family shows only in its width)."""
        return "sdxl" if self.parts else None

    @property
    def n_vectors(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def describe_width(dim: int) -> str:
    family = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL clip_g", 2048: "SDXL"}.get(int(dim))
    return f"{dim} ({family})" if family else str(dim)


def load_embedding(path, expected_dim: int | None = None, *, family: str | None = None,
                   widths: tuple[int, int] | None = None) -> LoadedEmbedding:
    """Load an embedding file; `expected_dim` (the text encoder's width) is checked when given. `family` is the
    model's ("sd1", "sd2", "sdxl"): an SDXL model reads SDXL files (see `load_sdxl_embedding`; `widths` are its two
    encoders' widths), an SD1/SD2 model refuses them naming both families. With neither `family` nor `expected_dim`
    (inspecting a file) every layout is read, SDXL files with their `parts`."""
    if family == "sdxl":
        return load_sdxl_embedding(path, widths)
    emb = _load_one(path, sdxl=family is None and expected_dim is None, model_family=family)
    _check_width(emb, Path(os.path.expanduser(str(path))), expected_dim)
    return emb


def _load_one(path, *, sdxl: bool, model_family: str | None = None) -> LoadedEmbedding:
    path = Path(os.path.expanduser(str(path)))
    if not path.exists():
        raise TiwizError(f"embedding file not found: {path}")
    if path.is_dir():
        raise TiwizError(f"{path} is a folder; pick the embedding file (.safetensors, .pt or .bin) inside it")
    from core.models.headers import require_regular_file

    require_regular_file(path)  # a FIFO would block the first read forever
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
    return _interpret(obj, path, metadata, png=(kind == "png"), sdxl=sdxl, model_family=model_family)


def load_sdxl_embedding(spec, widths: tuple[int, int] | None = None) -> LoadedEmbedding:
    """An SDXL embedding from one `{clip_l, clip_g}` file, or from diffusers' two single-tensor files: `spec` is a
    path, a pair of paths (list/tuple, or "A,B"), or one of the two files with its partner beside it
    (`learned_embeds.safetensors` <-> `learned_embeds_2.safetensors`). `widths` (CLIP-L, bigG) are checked."""
    paths = _spec_paths(spec)
    if len(paths) == 1:
        emb = _load_one(paths[0], sdxl=True)
        if not emb.parts:
            partner = _diffusers_partner(paths[0])
            if partner is None:
                raise TiwizError(
                    f"{paths[0].name} holds one tensor {emb.dim} wide (an SD1/SD2-style embedding), but this model is "
                    f"SDXL, which needs two sets of vectors, clip_l and clip_g{_widths_text(widths)}. An embedding only "
                    "works with the model family it was trained for. (For diffusers' SDXL output, keep "
                    "learned_embeds_2.safetensors beside learned_embeds.safetensors, or give both files.)")
            paths = [paths[0], partner]
    if len(paths) == 2:
        emb = _pair(paths, widths)
    elif len(paths) > 2:
        raise TiwizError(f"an SDXL embedding is one file or a pair of files, not {len(paths)}")
    if widths is not None:
        got = (int(emb.parts["clip_l"].shape[1]), int(emb.parts["clip_g"].shape[1]))
        if got != tuple(int(w) for w in widths):
            raise TiwizError(f"{emb.name}: clip_l/clip_g are {got[0]}/{got[1]} wide but this model's text encoders "
                             f"are {widths[0]}/{widths[1]} wide; an embedding only works with the model family it "
                             "was trained for")
    return emb


def _spec_paths(spec) -> list[Path]:
    if isinstance(spec, (list, tuple)):
        return [Path(os.path.expanduser(str(p))) for p in spec]
    text = str(spec)
    whole = Path(os.path.expanduser(text))
    if not whole.exists() and "," in text:
        return [Path(os.path.expanduser(p.strip())) for p in text.split(",") if p.strip()]
    return [whole]


_DIFFUSERS_STEM = re.compile(r"(.*?)(_2)?(-steps-\d+)?")


def _is_bigg_half(path: Path) -> bool:
    """`NAME_2.safetensors` or `NAME_2-steps-N.safetensors`: the bigG half of a diffusers SDXL pair."""
    return bool(_DIFFUSERS_STEM.fullmatch(path.stem).group(2))


def _diffusers_partner(path: Path) -> Path | None:
    """diffusers' SDXL script writes `NAME.safetensors` (CLIP-L) and `NAME_2.safetensors` (bigG) side by side, and
    its step checkpoints as `NAME-steps-N.safetensors` and `NAME_2-steps-N.safetensors`."""
    base, second, steps = _DIFFUSERS_STEM.fullmatch(path.stem).groups()
    partner = path.with_name(f"{base}{'' if second else '_2'}{steps or ''}{path.suffix}")
    return partner if partner != path and partner.is_file() else None


def _pair(paths: list[Path], widths) -> LoadedEmbedding:
    import torch

    a, b = (_load_one(p, sdxl=True) for p in paths)
    for emb, p in ((a, paths[0]), (b, paths[1])):
        if emb.parts:
            raise TiwizError(f"{p.name} already holds both clip_l and clip_g; give it alone, not as one of a pair")
    if widths is not None and (a.dim, b.dim) == (widths[1], widths[0]):
        a, b = b, a
    elif widths is None and _is_bigg_half(paths[0]):
        a, b = b, a
    if a.n_vectors != b.n_vectors:
        raise TiwizError(f"{paths[0].name} and {paths[1].name} hold {a.n_vectors} and {b.n_vectors} vectors; the two "
                         "halves of an SDXL embedding need the same number")
    return LoadedEmbedding(name=a.name, vectors=torch.cat([a.vectors, b.vectors], 1), format="diffusers-sdxl",
                           step=a.step, metadata=a.metadata, parts={"clip_l": a.vectors, "clip_g": b.vectors},
                           warnings=a.warnings + b.warnings)


def _widths_text(widths) -> str:
    return f" ({widths[0]} and {widths[1]} wide)" if widths else ""


# ---- reading ----------------------------------------------------------------------------------------------------
def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < 2:
        raise TiwizError(f"{path.name} is empty or truncated ({size} bytes)")
    # safetensors first: its 8-byte header length can start with 0x80 (a 128-byte header), a legacy pickle's mark
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[0] == 0x80:  # torch zip archive, or a legacy torch pickle
        return "torch"
    if head.startswith(b"\x89PNG"):
        return "png"
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
        raise TiwizError(f"cannot read {path.name}: corrupt or truncated safetensors file ({first_line(exc)})") from None
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
        raise TiwizError(f"cannot read {path.name}: corrupt or truncated torch file ({first_line(exc)})") from None


def _read_png(path: Path):
    """A1111 PNG embeddings: the `sd-ti-embedding` tEXt chunk (base64 JSON, tensors as {"TORCHTENSOR": list})."""
    import torch
    from PIL import Image

    try:
        with Image.open(path) as img:
            payload = getattr(img, "text", {}).get("sd-ti-embedding")
    except Exception as exc:
        raise TiwizError(f"cannot read {path.name}: {first_line(exc)}") from None
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
        raise TiwizError(f"cannot read the embedding in {path.name}: {first_line(exc)}") from None


# ---- interpreting -----------------------------------------------------------------------------------------------
def _interpret(obj, path: Path, metadata: dict, png: bool = False, sdxl: bool = False,
               model_family: str | None = None) -> LoadedEmbedding:
    warnings = []
    if isinstance(obj, dict):
        outs = [k for k in obj if isinstance(k, str) and k.endswith("_out")]
        if outs and len(outs) == len(obj):
            raise TiwizError(f"{path.name} holds only OneTrainer output embeddings ({', '.join(outs)}), which act on the "
                             "text encoder's output; tiwiz, A1111 and ComfyUI use input embeddings (clip_l/clip_g or "
                             "emp_params). Export the embedding without output embeddings.")
        if outs:
            warnings.append(f"{path.name}: ignored OneTrainer output embedding(s) {', '.join(outs)} (they act on the "
                            "text encoder's output; only the input vectors are used)")
            obj = {k: v for k, v in obj.items() if k not in outs}
    emb = _interpret_inputs(obj, path, metadata, png, sdxl, model_family)
    if warnings and not bool(emb.vectors.any()):
        raise TiwizError(f"{path.name} holds OneTrainer output embeddings ({', '.join(outs)}) and its input vectors "
                         "are all zero: it was trained on the text encoder's output side only, which tiwiz, A1111 and "
                         "ComfyUI do not use, so it would do nothing. Train or export it with input embeddings.")
    emb.warnings = warnings + emb.warnings
    return emb


def _interpret_inputs(obj, path: Path, metadata: dict, png: bool, sdxl: bool, model_family: str | None):
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
    step = _int_or_none(metadata.get("step") or metadata.get("ss_steps"))
    if "clip_l" in obj or "clip_g" in obj:
        model = FAMILY_NAMES.get(model_family or "", "SD1/SD2")
        if not sdxl:
            raise TiwizError(f"{path.name} is an SDXL embedding (clip_l + clip_g); this model is {model}. An embedding "
                             f"only works with the model family it was trained for: use it with an SDXL model, or "
                             f"train a {model} embedding.")
        missing = [k for k in SDXL_PARTS if not isinstance(obj.get(k), torch.Tensor)]
        if missing:
            raise TiwizError(f"{path.name} has {' and '.join(k for k in SDXL_PARTS if k not in missing)} but no "
                             f"{missing[0]}; an SDXL embedding needs both clip_l and clip_g")
        vec_l, vec_g = vector_matrix(obj["clip_l"], path.name), vector_matrix(obj["clip_g"], path.name)
        if vec_l.shape[0] != vec_g.shape[0]:
            raise TiwizError(f"{path.name}: clip_l has {vec_l.shape[0]} vectors but clip_g has {vec_g.shape[0]}; "
                             "the two halves of an SDXL embedding need the same number")
        return LoadedEmbedding(name=str(metadata.get("name") or stem), vectors=torch.cat([vec_l, vec_g], 1),
                               format="sdxl", step=step, metadata={str(k): str(v) for k, v in metadata.items()},
                               parts={"clip_l": vec_l, "clip_g": vec_g})
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


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _unsupported_global(exc: BaseException) -> str:
    """What the pickle asked for, without torch's advice to allow-list it."""
    from core.errors import pickle_refusal

    return pickle_refusal(exc) or "unsupported pickle content"
