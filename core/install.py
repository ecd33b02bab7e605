"""Putting a finished embedding where an image UI loads it: finding the embeddings folders of A1111 (and Forge),
ComfyUI and InvokeAI installs, picking the file each one reads best, and copying it there atomically. Torch-free:
the wizard's finish screen and `tiwiz install` both use it.

Which file goes where (a run writes `NAME.safetensors`, and for SD1/SD2 also the A1111 `NAME.pt`):
- A1111/Forge and ComfyUI get the `.safetensors` (no pickle; both read a single-tensor file as an SD1/SD2
  embedding and a `{clip_l, clip_g}` file as an SDXL one);
- InvokeAI gets, from a run folder, the `.pt` for SD1/SD2 and the `.safetensors` for SDXL (`{clip_l, clip_g}`, which
  it reads). Its probe (`TI_Config_Base._get_base_or_raise`) takes the width of a single-tensor file from
  `shape[0]`, the vector count, so it refuses our `{NAME: [n, dim]}` file; but it takes the width of an
  `emb_params` tensor (kohya's layout) from `shape[-1]`, and its loader reads that layout. So a `.safetensors` named
  on its own is installed for InvokeAI as `{emb_params: [n, dim]}`, the same bytes under that key. The run's own
  file keeps the trigger as its key, because diffusers names the token after the key of a one-tensor file;
- a plain folder gets the `.safetensors`.

A file named on its own is the file installed (a same-stem file beside it may be another embedding); only a run
folder's two final files are known to be one embedding. The file must look like an embedding (a small file of
tensors), and the copy is never more readable than the source.
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
        siblings = [source.with_suffix(".pt")]  # the same run's A1111 file
        return [source] + [p for p in siblings if p.is_file()]
    if not source.exists():
        raise TiwizError(f"{source} does not exist")
    if source.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise TiwizError(f"{source.name} is not an embedding file (.safetensors, .pt or .bin)")
    return [source]


MAX_EMBEDDING_BYTES = 64 << 20  # embeddings are kilobytes (core.embeddings.formats reads at most this)


def check_embedding(path: Path) -> None:
    """TiwizError unless `path` looks like an embedding, torch-free: a small regular file that is a safetensors file
    of at most 4 floating-point tensors of 1 or 2 dimensions, or a torch file (a zip holding data.pkl, or a legacy
    pickle; `tiwiz inspect` reads it fully)."""
    from core.models.headers import read_safetensors_header, require_regular_file, sniff_torch_pickle_keys

    size = require_regular_file(path)
    why = f"{path.name} is not an embedding"
    if size > MAX_EMBEDDING_BYTES:
        raise TiwizError(f"{why}: {size / 2**20:.0f} MB, where an embedding is a few KB (a model checkpoint?)")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix.lower() == ".safetensors":
        try:
            header = read_safetensors_header(path)
        except TiwizError as exc:
            raise TiwizError(f"{why} ({exc})") from None
        dims = [len(shape) for shape in header.shapes.values()]
        floats = all(d.startswith("F") or d == "BF16" for d in header.dtypes.values())
        if not 1 <= len(dims) <= 4 or not all(d in (1, 2) for d in dims) or not floats:
            raise TiwizError(f"{why}: it holds {len(dims)} tensor(s) of shapes "
                             f"{', '.join(str(list(s)) for s in list(header.shapes.values())[:4])}; an embedding "
                             "holds 1 to 4 float tensors of vectors")
    elif not ((head.startswith(b"PK\x03\x04") and sniff_torch_pickle_keys(path) is not None) or head[:1] == b"\x80"):
        raise TiwizError(f"{why}: not a file saved by torch")


def invokeai_layout(path: Path) -> bytes | None:
    """The bytes of `path` (a one-tensor SD1/SD2 `.safetensors`) with its tensor under the key `emb_params`, which
    InvokeAI's probe and loader read (see the module docstring); None for any other file. Torch-free: the header is
    rewritten, the tensor bytes are copied unchanged."""
    import json
    import struct

    if path.suffix.lower() != ".safetensors":
        return None
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    tensors = [k for k in header if k != "__metadata__"]
    if len(tensors) != 1 or tensors[0] in ("clip_l", "clip_g") or len(header[tensors[0]].get("shape", ())) != 2:
        return None
    header = {("emb_params" if k == tensors[0] else k): v for k, v in header.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors aligns the data that follows to 8 bytes
    return struct.pack("<Q", len(blob)) + blob + data[8 + n:]


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
                   name: str | None = None, layout: bytes | None = None) -> Path:
    """Copy `src` into `folder` (as `name`, default its own name) atomically, with the mode a new file gets under the
    umask but never more readable than `src`; refuses to replace an existing file unless `overwrite`, and a file that
    is not an embedding. `layout`: the bytes to write instead of a plain copy (`invokeai_layout`)."""
    src, folder = Path(src), Path(folder)
    if not src.is_file():
        raise TiwizError(f"{src} does not exist.")
    if not folder.is_dir():
        raise TiwizError(f"{folder} is not a folder.")
    check_embedding(src)
    dest = folder / (name or src.name)
    if dest.resolve() == src.resolve():
        raise TiwizError(f"{src} is already in {folder}.")
    if dest.exists() and not overwrite:
        raise TiwizError(f"{dest} already exists (replace it with --overwrite).")
    mode = os.stat(src).st_mode & 0o777  # links followed: the file whose content is copied

    def write(tmp: str) -> None:
        if layout is None:
            shutil.copyfile(src, tmp)
        else:
            with open(tmp, "wb") as fh:
                fh.write(layout)

    return atomic_write_with(dest, write, mode=mode)


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
    layout = None
    if target.app == "InvokeAI" and chosen.suffix.lower() == ".safetensors":
        check_embedding(chosen)
        layout = invokeai_layout(chosen)
    return target, copy_embedding(chosen, target.path, overwrite=overwrite, layout=layout)
