"""Where a finished embedding can go: A1111 (`stable-diffusion-webui/embeddings`) and ComfyUI
(`ComfyUI/models/embeddings`) folders found near the usual places, and copying into them safely."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_write_with
from core.errors import TiwizError

A1111_DIRS = ("stable-diffusion-webui", "stable-diffusion-webui-forge", "sd-webui", "webui")
COMFY_DIRS = ("ComfyUI", "comfyui")


@dataclass(frozen=True)
class Target:
    app: str  # "A1111" | "ComfyUI"
    path: Path


def default_roots() -> list[Path]:
    roots = [Path("/workspace"), Path.home(), Path.cwd()]
    return [r for r in roots if r.is_dir()]


def find_targets(roots=None) -> list[Target]:
    """Embedding folders of A1111 and ComfyUI installs directly in (or one level below) each root."""
    found: dict[Path, Target] = {}
    for root in roots if roots is not None else default_roots():
        root = Path(root).expanduser()
        candidates = [root]
        try:
            candidates += [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            pass
        for base in candidates:
            for names, kind, sub in ((A1111_DIRS, "A1111", ("embeddings",)),
                                     (COMFY_DIRS, "ComfyUI", ("models", "embeddings"))):
                installs = [base] if base.name in names else [base / n for n in names]
                for install in installs:
                    folder = install.joinpath(*sub)
                    if folder.is_dir():
                        found.setdefault(folder.resolve(), Target(kind, folder))
    return sorted(found.values(), key=lambda t: (t.app, str(t.path)))


def copy_embedding(src: str | os.PathLike, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy `src` into `folder` atomically; refuses to replace an existing file unless `overwrite`."""
    src, folder = Path(src), Path(folder)
    if not src.is_file():
        raise TiwizError(f"{src} does not exist.")
    if not folder.is_dir():
        raise TiwizError(f"{folder} is not a folder.")
    dest = folder / src.name
    if dest.exists() and not overwrite:
        raise TiwizError(f"{dest} already exists.")
    return atomic_write_with(dest, lambda tmp: shutil.copyfile(src, tmp))
