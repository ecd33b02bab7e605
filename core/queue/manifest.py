"""What `tiwiz queue add` reads: a config file or a manifest (base settings and a [[job]] list, relative paths the
manifest's folder's) and `--set key=value` overrides, as the settings dicts `core.queue.jobs.add_jobs` validates.
Torch-free.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import TiwizError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def parse_sets(pairs: list[str] | None) -> dict:
    """`--set key=value` pairs as a dict (values are coerced and checked by TrainConfig)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise TiwizError(f"--set {pair!r}: expected key=value, e.g. --set steps=2000")
        out[key] = value
    return out


def read_toml(path: str | os.PathLike) -> dict:
    path = Path(path)
    from core.training.config import load_toml

    try:
        return load_toml(path)  # a UTF-8 BOM (Notepad) is fine
    except UnicodeDecodeError:
        raise TiwizError(f"{path}: not a UTF-8 text file") from None
    except FileNotFoundError:
        raise TiwizError(f"{path}: no such file") from None
    except OSError as exc:
        raise TiwizError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise TiwizError(f"{path}: not valid TOML: {exc}") from None


def manifest_entries(path: str | os.PathLike) -> list[tuple[str | None, dict]]:
    """A manifest: base settings (top-level keys, or a [base] / [train] table) and a [[job]] list, each entry with
    `name` and any override (data, init_text, steps, ...). Returns (job name or None, full config dict) per job."""
    path = Path(path)
    data = read_toml(path)
    jobs = data.pop("job", None)
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, dict) for j in jobs):
        raise TiwizError(f"{path}: a manifest needs a [[job]] list (each with name, data, init_text and overrides)")
    base = {}
    for table in ("base", "train"):
        if isinstance(data.get(table), dict):
            base.update(data.pop(table))
    base.update(data)
    entries = []
    for i, job in enumerate(jobs, 1):
        merged = _relative_to(path.parent.resolve(), {**base, **job})
        entries.append((merged.get("name") or None, merged))
        if not merged.get("name"):
            raise TiwizError(f"{path}: job {i}: name: required (the embedding name)")
    return entries


_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _relative_to(folder: Path, settings: dict) -> dict:
    """A manifest's relative paths are its own folder's, not the folder `queue add` runs in (a model given as a
    Hugging Face id, `org/name`, stays one unless the folder has it)."""
    out = dict(settings)
    for key in ("model", "data", "init_from", "output", "template"):
        value = out.get(key)
        if not isinstance(value, str) or not value or value.startswith("~") or os.path.isabs(value):
            continue
        candidate = folder / value
        if key == "template" and not candidate.exists():
            continue  # a built-in template's name
        if key == "model" and _HUB_ID.fullmatch(value) and not candidate.exists():
            continue
        out[key] = str(candidate)
    return out
