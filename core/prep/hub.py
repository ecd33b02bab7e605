"""Models named by a Hugging Face repository id (BLIP, the WD14 tagger): whether a name is a local folder, whether
the hub can be reached, and what to tell a user whose machine has neither the model nor the network. Torch-free.

An uncached id on an offline machine fails here at once, with a message that says how to get the model, instead of
the hub client's minutes of retries."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from core.errors import TiwizError

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
DEFAULT_TAGGER = "SmilingWolf/wd-eva02-large-tagger-v3"


def looks_like_path(model: str) -> bool:
    """A folder rather than a hub id ("org/name")."""
    return (Path(model).expanduser().exists() or model.startswith((".", "/", "~", "\\")) or model.count("/") > 1
            or "\\" in model)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers a TCP connect within `timeout` (name lookup included, run on a thread so a
    hanging resolver cannot stall us); the hub client would otherwise retry for minutes on an offline pod."""
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return bool(result and result[0])


def fetch_help(model: str, flag: str, files: tuple[str, ...] = ()) -> str:
    """How to get `model` onto this machine, for a message."""
    names = (" " + " ".join(files)) if files else ""
    return (f"Download it beforehand on a machine with network access, e.g. `huggingface-cli download {model}{names}` "
            f"(it lands in the Hugging Face cache; copy that cache, or add `--local-dir FOLDER` and point {flag} at "
            f"FOLDER), or allow downloads with HF_HUB_OFFLINE=0.")


def cached_file(model: str, filename: str) -> str | None:
    """The path of `filename` of repository `model` in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, filename)
    except Exception:
        return None
    return found if isinstance(found, str) else None


def require_hub(what: str, model: str, flag: str, files: tuple[str, ...] = ()) -> None:
    """Raise a TiwizError saying how to get `model` when it is not cached and cannot be downloaded from here."""
    if hub_offline():
        raise TiwizError(f"{what} {model!r} is not available on this machine: it is not in the local Hugging Face "
                         "cache, and offline mode is on (HF_HUB_OFFLINE=1). " + fetch_help(model, flag, files))
    if not hub_reachable():
        raise TiwizError(f"{what} {model!r} is not available on this machine: it is not in the local Hugging Face "
                         "cache, and the Hugging Face hub cannot be reached from here. "
                         + fetch_help(model, flag, files))
