"""Textual-inversion embeddings: names, initial vectors, saving (A1111 `.pt` + single-key `.safetensors`) and loading.

Loading every known file layout lives in `core.embeddings.formats`; `load_embedding` is re-exported here.
Torch-free at import time (torch is imported inside functions), so the TUI may use `sanitize_name` and
`trigger_problems(None, name)`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.embeddings.formats import LoadedEmbedding, describe_width, load_embedding  # noqa: F401  (re-exported)
from core.embeddings.formats import MAX_VECTORS, vector_matrix
from core.errors import TiwizError

MAX_NAME_LENGTH = 100  # leaves room for "-STEP" and ".safetensors" within a 255-byte file name
A1111_STAR_TOKEN = 265  # CLIP id of "*", the constant A1111 writes in string_to_token
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}

__all__ = [
    "LoadedEmbedding", "MAX_NAME_LENGTH", "MAX_VECTORS", "check_trigger", "init_vectors", "load_embedding",
    "name_problem", "sanitize_name",
    "save_embedding", "save_sdxl_embedding", "trigger_problems",
]


def sanitize_name(name: str) -> str:
    """The embedding name as A1111 keeps it (`[alnum._- ]` only), safe as a file stem: no path separators, no `..`,
    no leading dots or spaces, no trailing dots or spaces. Raises TiwizError if nothing usable is left."""
    if not isinstance(name, str):
        raise TiwizError(f"embedding name must be text, not {type(name).__name__}")
    kept = "".join(ch for ch in name if ch.isalnum() or ch in "._- ")
    kept = re.sub(r"\.{2,}", ".", kept)
    kept = re.sub(r"\s+", " ", kept).strip(" .")
    kept = kept.lstrip("-")  # a leading dash reads as an option on command lines
    if not kept:
        raise TiwizError(f"embedding name {name!r} has no usable characters; use letters, digits, '.', '_', '-' "
                         "or spaces (for example 'my-style')")
    if kept.split(".")[0].strip().upper() in _WINDOWS_RESERVED:
        raise TiwizError(f"embedding name {kept!r} is a reserved file name on Windows (A1111 could not load it there); "
                         "pick another name")
    if len(kept) > MAX_NAME_LENGTH:
        raise TiwizError(f"embedding name is {len(kept)} characters long; keep it to {MAX_NAME_LENGTH} or fewer")
    return kept


def name_problem(name: str) -> str | None:
    """Why `name`, exactly as typed, cannot be an embedding name (None: it can). The rules are `sanitize_name`'s
    (the ones the trainer applies), and one more: no spaces, since the name is the word typed in prompts. The wizard
    checks every keystroke with this; `trigger_problems` adds the warnings that depend on the tokenizer."""
    if not isinstance(name, str) or not name.strip():
        return "give the embedding a name"
    try:
        clean = sanitize_name(name)
    except TiwizError as exc:
        return str(exc)
    if any(ch.isspace() for ch in name):
        return "use a single word (dashes and underscores are fine): the name is typed in prompts"
    if clean != name:
        return (f"the name would be saved as {clean!r}: use letters, digits, '.', '_' and '-' only, and no leading "
                "dash or dot")
    return None


def trigger_problems(tokenizer, name: str, n_vectors: int = 1) -> list[str]:
    """Reasons `name` makes a bad trigger word for this tokenizer (empty list: fine). `tokenizer` is a transformers
    CLIP tokenizer, or None for the bundled CLIP tokenizer (torch-free, for the TUI).

    - it is already in the vocabulary: diffusers' `load_textual_inversion` refuses it;
    - it encodes to a single existing CLIP token: in A1111 it would replace that ordinary word in every prompt;
    - `name_1`… already exist: diffusers names the extra vectors of a multi-vector embedding that way.
    """
    if tokenizer is None:
        from core.tokens import _get_tokenizer, token_ids

        bundled = _get_tokenizer()
        vocab, ids = bundled.get_vocab(with_added_tokens=True), token_ids(name)
        to_token = bundled.id_to_token
    else:
        vocab, ids = tokenizer.get_vocab(), tokenizer(name, add_special_tokens=False).input_ids
        to_token = tokenizer.convert_ids_to_tokens
    problems = []
    if name in vocab:
        problems.append(f"'{name}' is already a word in the CLIP vocabulary (diffusers refuses to load it)")
    elif len(ids) == 1:
        word = to_token(ids[0]).replace("</w>", "")
        problems.append(f"'{name}' is the existing CLIP word '{word}'; the embedding would replace that word in every "
                        "prompt")
    taken = [f"{name}_{i}" for i in range(1, max(int(n_vectors), 2)) if f"{name}_{i}" in vocab]
    if taken:
        problems.append(f"{', '.join(repr(t) for t in taken)} already exist in the vocabulary (diffusers names the "
                        f"extra vectors of '{name}' that way)")
    return problems


def check_trigger(tokenizer, name: str, n_vectors: int = 1) -> None:
    """Raise TiwizError if `name` is a bad trigger word (see `trigger_problems`)."""
    problems = trigger_problems(tokenizer, name, n_vectors)
    if problems:
        raise TiwizError(f"embedding name '{name}' makes a poor trigger: " + "; ".join(problems)
                         + ". Pick a made-up word such as 'zxq-" + re.sub(r"\s+", "-", name.lower()) + "'.")


def _check_n_vectors(n_vectors) -> int:
    if isinstance(n_vectors, bool) or not isinstance(n_vectors, int) or not 1 <= n_vectors <= MAX_VECTORS:
        raise TiwizError(f"vectors per token must be a whole number from 1 to {MAX_VECTORS}, not {n_vectors!r}")
    return n_vectors


def init_token_plan(n_tokens: int, n_vectors: int) -> list[int]:
    """Which init token starts each vector (A1111): vector i takes token `i*n_tokens//n_vectors`; [] for no tokens."""
    return [i * n_tokens // n_vectors for i in range(n_vectors)] if n_tokens else []


def init_vectors(tokenizer, text_encoder, init_text: str, n_vectors: int):
    """Starting vectors with A1111's semantics: vector i is the token embedding of init token `i*n_tok//n_vectors`
    (tokens repeat when there are fewer than `n_vectors`, are subsampled when there are more); no tokens → zeros.
    Returns a new fp32 CPU tensor [n_vectors, dim]."""
    import torch

    n_vectors = _check_n_vectors(n_vectors)
    weight = text_encoder.get_input_embeddings().weight
    dim = weight.shape[1]
    text = (init_text or "").strip()
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids if text else []
    if not ids:
        return torch.zeros(n_vectors, dim, dtype=torch.float32)
    rows = [ids[i] for i in init_token_plan(len(ids), n_vectors)]
    with torch.no_grad():
        picked = weight[torch.tensor(rows, device=weight.device)]
    return picked.detach().to("cpu", torch.float32).clone()


def _clean_vectors(vectors):
    return vector_matrix(vectors, "embedding vectors",
                         nonfinite="it was not saved (the last good file is kept)")


def save_embedding(vectors, path_stem, *, name: str, step: int, base_model: str, base_hash: str | None,
                   init_text: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `path_stem.pt` (A1111 layout, plain types only) and `path_stem.safetensors` (one fp32 [n, dim] tensor
    keyed by `name`, provenance in string metadata), each atomically. Existing files need `overwrite=True`.
    Returns (pt_path, safetensors_path)."""
    from safetensors.torch import save_file

    from core import __version__
    from core.atomic import atomic_write_with
    from core.embeddings.a1111_pt import save_a1111_pt

    if not isinstance(name, str) or not name.strip():
        raise TiwizError("an embedding needs a name")
    vec = _clean_vectors(vectors)
    stem = Path(path_stem)
    pt_path = stem.with_name(stem.name + ".pt")
    st_path = stem.with_name(stem.name + ".safetensors")
    existing = [p for p in (pt_path, st_path) if p.exists()]
    if existing and not overwrite:
        raise TiwizError(f"{existing[0]} already exists; choose another name or allow overwriting (--overwrite)")
    for p in existing:
        if p.is_dir():
            raise TiwizError(f"{p} is a folder; cannot write an embedding there")
    step = int(step)
    pt_data = {
        "string_to_token": {"*": A1111_STAR_TOKEN},
        "string_to_param": {"*": vec},
        "name": name,
        "step": step,
        "sd_checkpoint": None if base_hash is None else str(base_hash),
        "sd_checkpoint_name": None if base_model is None else str(base_model),
    }
    metadata = {
        "format": "pt",
        "name": name,
        "base_model": "" if base_model is None else str(base_model),
        "base_model_hash": "" if base_hash is None else str(base_hash),
        "step": str(step),
        "vectors": str(vec.shape[0]),
        "dim": str(vec.shape[1]),
        "init_text": "" if init_text is None else str(init_text),
        "tiwiz_version": __version__,
    }
    os.makedirs(stem.parent, exist_ok=True)
    save_a1111_pt(pt_data, pt_path, name)
    atomic_write_with(st_path, lambda tmp: save_file({name: vec}, tmp, metadata=metadata))
    return pt_path, st_path


def save_sdxl_embedding(clip_l, clip_g, path_stem, *, name: str, step: int, base_model: str, base_hash: str | None,
                        init_text: str, overwrite: bool = False) -> Path:
    """Write `path_stem.safetensors` with exactly two fp32 tensors, `clip_l [n, 768]` and `clip_g [n, 1280]` (same n),
    and the same string metadata as SD1 files: the one SDXL layout A1111/Forge, ComfyUI, InvokeAI and SD.Next all
    load. There is no A1111 `.pt` layout for SDXL, so none is written. Returns the path."""
    from safetensors.torch import save_file

    from core import __version__
    from core.atomic import atomic_write_with

    if not isinstance(name, str) or not name.strip():
        raise TiwizError("an embedding needs a name")
    vec_l, vec_g = _clean_vectors(clip_l), _clean_vectors(clip_g)
    if vec_l.shape[0] != vec_g.shape[0]:
        raise TiwizError(f"embedding vectors: clip_l has {vec_l.shape[0]} vectors but clip_g has {vec_g.shape[0]}; "
                         "an SDXL embedding needs the same number in both")
    stem = Path(path_stem)
    st_path = stem.with_name(stem.name + ".safetensors")
    if st_path.exists() and not overwrite:
        raise TiwizError(f"{st_path} already exists; choose another name or allow overwriting (--overwrite)")
    if st_path.is_dir():
        raise TiwizError(f"{st_path} is a folder; cannot write an embedding there")
    metadata = {
        "format": "pt",
        "name": name,
        "base_model": "" if base_model is None else str(base_model),
        "base_model_hash": "" if base_hash is None else str(base_hash),
        "step": str(int(step)),
        "vectors": str(vec_l.shape[0]),
        "dim": f"{vec_l.shape[1]}+{vec_g.shape[1]}",
        "family": "sdxl",
        "init_text": "" if init_text is None else str(init_text),
        "tiwiz_version": __version__,
    }
    os.makedirs(stem.parent, exist_ok=True)
    atomic_write_with(st_path, lambda tmp: save_file({"clip_l": vec_l, "clip_g": vec_g}, tmp, metadata=metadata))
    return st_path
