"""The exact-resume state file `state/latest.pt`: plain types and tensors only, so it loads with weights_only=True.

It holds the trainable vectors, optimizer and grad-scaler state, every RNG the run draws from (python, numpy, torch
CPU, CUDA, the trainer's own generator and data/template rng), the step, epoch, batch order and loss-history position.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from core.atomic import atomic_write_with
from core.errors import TiwizError, pickle_refusal, without_torch_advice

STATE_VERSION = 1


def capture_global_rng() -> dict:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": _py_state(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_global_rng(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(py_state_from(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def py_state(rng: random.Random) -> list:
    return _py_state(rng.getstate())


def py_state_from(saved: list) -> tuple:
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def save_state(path: str | os.PathLike, state: dict) -> Path:
    import torch

    state = {"version": STATE_VERSION, **state}
    return atomic_write_with(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise TiwizError(f"nothing to resume: {path} does not exist (the run saved no state yet)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        refusal = pickle_refusal(exc)
        if refusal:
            raise TiwizError(f"{path}: refused: not a tiwiz resume state ({refusal}, which could run code; nothing "
                             "was executed)") from None
        raise TiwizError(f"{path}: cannot read the resume state ({exc.__class__.__name__}: "
                         f"{without_torch_advice(exc)})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise TiwizError(f"{path}: not a tiwiz resume state (or from an incompatible version)")
    return state


def final_files_step(out_dir: str | os.PathLike, name: str) -> int | None:
    """The step of the top-level NAME.pt / NAME.safetensors, None when they are missing or unreadable. Torch-free.
    The .pt is written before the .safetensors, so a .safetensors at step N means both files hold step N."""
    from core.models.headers import read_safetensors_header

    out_dir = Path(out_dir)
    if not (out_dir / f"{name}.pt").is_file():
        return None
    try:
        return int(read_safetensors_header(out_dir / f"{name}.safetensors").metadata.get("step", ""))
    except (TiwizError, OSError, ValueError):
        return None


def data_fingerprint(folder: str | os.PathLike) -> list[list]:
    """[name, size, mtime_ns] of every training image in `folder` and of its same-stem .txt caption, sorted."""
    from core.prep.captions import list_images

    rows = []
    for image in list_images(folder):
        for path in (image, image.with_suffix(".txt")):
            try:
                st = path.stat()
            except OSError:
                continue
            rows.append([path.name, int(st.st_size), int(st.st_mtime_ns)])
    return sorted(rows)


def describe_data_change(saved: list | None, now: list) -> str | None:
    """What changed between two fingerprints in words ("2 files removed (a.png, b.png); 1 changed (c.txt)"), or
    None when nothing did (or the state predates fingerprints)."""
    if saved is None:
        return None
    before = {str(r[0]): (int(r[1]), int(r[2])) for r in saved}
    after = {str(r[0]): (int(r[1]), int(r[2])) for r in now}
    parts = []
    for label, names in (("removed", sorted(set(before) - set(after))), ("added", sorted(set(after) - set(before))),
                         ("changed", sorted(n for n in set(before) & set(after) if before[n] != after[n]))):
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            parts.append(f"{len(names)} file{'s' if len(names) != 1 else ''} {label} ({shown})")
    return "; ".join(parts) or None
