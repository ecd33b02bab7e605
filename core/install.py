"""Putting a finished embedding where an image UI loads it: finding the embeddings folders of A1111 (and Forge),
ComfyUI and InvokeAI installs, picking the file each one reads best, and copying it there atomically. Torch-free:
the wizard's finish screen and `tiwiz install` both use it.

Which file goes where (a run writes `NAME.safetensors`, and for SD1/SD2 also the A1111 `NAME.pt`):
- A1111/Forge and ComfyUI get the `.safetensors` (no pickle; both read a single-tensor file as an SD1/SD2
  embedding and a `{clip_l, clip_g}` file as an SDXL one);
- InvokeAI gets the `.pt` for SD1/SD2, since its install check misreads a single-tensor safetensors file whose key
  is not one it knows, and the `.safetensors` for SDXL (`{clip_l, clip_g}`, which it reads);
- a plain folder gets the `.safetensors`.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.atomic import atomic_write_with
from core.errors import TiwizError

A1111_DIRS = ("stable-diffusion-webui", "stable-diffusion-webui-forge", "sd-webui", "webui")
COMFY_DIRS = ("ComfyUI", "comfyui")
INVOKE_DIRS = ("invokeai", "InvokeAI")
APPS = {"a1111": "A1111", "comfyui": "ComfyUI", "invokeai": "InvokeAI"}
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class Target:
    app: str  # "A1111" | "ComfyUI" | "InvokeAI" | "folder"
    path: Path


def default_roots() -> list[Path]:
    """Where installs usually live: /workspace (pods), the home folder, the current folder, and $INVOKEAI_ROOT."""
    roots = [Path("/workspace"), Path.home(), Path.cwd()]
    if os.environ.get("INVOKEAI_ROOT"):
        roots.append(Path(os.environ["INVOKEAI_ROOT"]).expanduser())
    return [r for r in roots if r.is_dir()]


def _embedding_folders(install: Path, app: str) -> list[Path]:
    if app == "A1111":
        return [install / "embeddings"]
    if app == "ComfyUI":
        return [install / "models" / "embeddings"]
    # InvokeAI scans autoimport/embedding at start-up (2.3-3.x); later versions keep models/<base>/embedding
    return [install / "autoimport" / "embedding", install / "models" / "sd-1" / "embedding"]


def find_targets(roots=None) -> list[Target]:
    """Embedding folders of A1111, ComfyUI and InvokeAI installs directly in (or one level below) each root."""
    found: dict[Path, Target] = {}
    for root in roots if roots is not None else default_roots():
        root = Path(root).expanduser()
        candidates = [root]
        try:
            candidates += [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except OSError:
            pass
        for base in candidates:
            for names, app in ((A1111_DIRS, "A1111"), (COMFY_DIRS, "ComfyUI"), (INVOKE_DIRS, "InvokeAI")):
                installs = [base] if base.name in names else [base / n for n in names]
                for install in installs:
                    for folder in _embedding_folders(install, app):
                        if folder.is_dir():
                            found.setdefault(folder.resolve(), Target(app, folder))
                            break
    return sorted(found.values(), key=lambda t: (t.app, str(t.path)))


# --- which file ---------------------------------------------------------------------------------------------------

def embedding_files(source: str | os.PathLike) -> list[Path]:
    """The files of one embedding: `source` itself and its same-stem siblings (`NAME.safetensors`, `NAME.pt`), or,
    for a run folder, its final `NAME.safetensors`/`NAME.pt`."""
    source = Path(source).expanduser()
    if source.is_dir():
        finals = sorted(p for p in source.glob("*.safetensors") if not p.name.startswith("."))
        if not finals:
            raise TiwizError(f"{source} holds no final embedding (NAME.safetensors); has the run finished? Give a "
                             "checkpoint file from its embeddings/ folder instead")
        if len(finals) > 1:
            raise TiwizError(f"{source} holds {len(finals)} embeddings ({', '.join(p.name for p in finals)}); give "
                             "the file to install")
        source = finals[0]
    if not source.is_file():
        raise TiwizError(f"{source} does not exist")
    if source.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise TiwizError(f"{source.name} is not an embedding file (.safetensors, .pt or .bin)")
    siblings = [source.with_suffix(s) for s in EMBEDDING_SUFFIXES if s != source.suffix.lower()]
    return [source] + [p for p in siblings if p.is_file()]


def is_sdxl(path: str | os.PathLike) -> bool:
    """Whether a `.safetensors` embedding is an SDXL pair (`clip_l` and `clip_g`); False for other files."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return False
    from core.models.headers import read_safetensors_header

    keys = set(read_safetensors_header(path).shapes)
    return {"clip_l", "clip_g"} <= keys


def pick_file(files: list[Path], app: str) -> Path:
    """The file `app` should get out of one embedding's `files` (see the module docstring)."""
    by_suffix = {p.suffix.lower(): p for p in files}
    st, pt = by_suffix.get(".safetensors"), by_suffix.get(".pt") or by_suffix.get(".bin")
    if app == "InvokeAI":
        if st is not None and is_sdxl(st):
            return st
        order = (pt, st)
    else:
        order = (st, pt)
    for p in order:
        if p is not None:
            return p
    return files[0]


# --- copying ------------------------------------------------------------------------------------------------------

def copy_embedding(src: str | os.PathLike, folder: str | os.PathLike, *, overwrite: bool = False,
                   name: str | None = None) -> Path:
    """Copy `src` into `folder` (as `name`, default its own name) atomically, with the mode a new file gets under the
    umask; refuses to replace an existing file unless `overwrite`."""
    src, folder = Path(src), Path(folder)
    if not src.is_file():
        raise TiwizError(f"{src} does not exist.")
    if not folder.is_dir():
        raise TiwizError(f"{folder} is not a folder.")
    dest = folder / (name or src.name)
    if dest.resolve() == src.resolve():
        raise TiwizError(f"{src} is already in {folder}.")
    if dest.exists() and not overwrite:
        raise TiwizError(f"{dest} already exists (replace it with --overwrite).")
    return atomic_write_with(dest, lambda tmp: shutil.copyfile(src, tmp))


def resolve_target(to: str | None, roots=None) -> Target:
    """`--to`: an app name (a1111, comfyui, invokeai) found under the roots, or a folder; None = the only install
    found. Several matching installs are an error listing them, so the user picks one by its folder."""
    if to and to.lower() not in APPS:
        folder = Path(to).expanduser()
        if not folder.is_dir():
            raise TiwizError(f"--to: {folder} is not a folder (give a1111, comfyui, invokeai or an existing folder)")
        for t in find_targets(roots):
            if t.path.resolve() == folder.resolve():
                return t
        return Target("folder", folder)
    found = find_targets(roots)
    if to:
        found = [t for t in found if t.app == APPS[to.lower()]]
    what = APPS[to.lower()] if to else "A1111, ComfyUI or InvokeAI"
    if not found:
        places = ", ".join(str(r) for r in (roots if roots is not None else default_roots()))
        raise TiwizError(f"no {what} embeddings folder found under {places}; give the folder with --to DIR")
    if len(found) > 1:
        listed = "; ".join(f"{t.app} {t.path}" for t in found)
        raise TiwizError(f"several embeddings folders found ({listed}); choose one with --to DIR")
    return found[0]


def install(source: str | os.PathLike, to: str | None = None, *, overwrite: bool = False, roots=None
            ) -> tuple[Target, Path]:
    """Copy the right file of the embedding `source` (a file or a run folder) into a UI's embeddings folder.
    Returns (target, written path)."""
    files = embedding_files(source)
    target = resolve_target(to, roots)
    chosen = pick_file(files, target.app)
    return target, copy_embedding(chosen, target.path, overwrite=overwrite)
