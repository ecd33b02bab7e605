"""Find Stable Diffusion checkpoints on disk (A1111, ComfyUI, the Hugging Face cache, pod folders). Torch-free.

Only headers are read: a safetensors file's JSON header, a .ckpt's `data.pkl` key names, a diffusers folder's configs.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import TiwizError
from core.models.headers import (
    SAFETENSORS_EXTS, TORCH_EXTS, Detection, detect_family, detect_in_pickle_text, read_safetensors_header,
    sniff_torch_pickle_keys,
)

CHECKPOINT_EXTS = (".safetensors", ".ckpt")
A1111_SUBDIR = ("models", "Stable-diffusion")
COMFYUI_SUBDIRS = (("models", "checkpoints"), ("models", "diffusers"))
SKIP_DIRS = {"node_modules", "__pycache__", "site-packages", "venv", "proc", "sys", "dev", "lost+found"}
KNOWN_DIR_DEPTH = 3   # model folders are organised in a few levels of subfolders at most
GENERIC_DEPTH = 2     # /workspace, ~, cwd: shallow
MAX_DIRS_PER_SCAN = 4000
SUPPORTED_FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class CheckpointInfo:
    path: Path
    kind: str  # "diffusers" | "safetensors" | "ckpt"
    family: str  # "sd1" | "sd2" | "sdxl" | "unknown"
    size_bytes: int
    source: str  # "a1111" | "comfyui" | "hf-cache" | "user"
    name: str = ""
    problem: str = ""  # why it cannot be used ("" when it looks loadable)
    prediction_type: str | None = None  # known for diffusers folders (scheduler config); None = decided at load

    @property
    def usable(self) -> bool:
        return not self.problem and self.family in SUPPORTED_FAMILIES

    def to_dict(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        d["usable"] = self.usable
        return d


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder (`$HF_HUB_CACHE`, `$HF_HOME/hub` or `~/.cache/huggingface/hub`)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def default_roots() -> list[Path]:
    roots = [Path("/workspace"), Path.home(), Path.cwd()]
    return [r for r in roots if r.is_dir()]


def inspect_checkpoint(path: str | os.PathLike, source: str = "user") -> CheckpointInfo:
    """Describe one checkpoint file or diffusers folder from its header. Problems (corrupt, SDXL, a LoRA...) are
    reported in `.problem`; a path that is neither a checkpoint file nor a model folder raises TiwizError."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TiwizError(f"{path}: no such file or folder")
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet" / "config.json").is_file():
            raise TiwizError(f"{path}: not a diffusers model folder (no model_index.json)")
        return _inspect_diffusers(path, source)
    ext = path.suffix.lower()
    size = path.stat().st_size
    if ext in SAFETENSORS_EXTS:
        try:
            header = read_safetensors_header(path)
        except TiwizError as exc:
            return CheckpointInfo(path, "safetensors", "unknown", size, source, path.name, problem=_strip(exc, path))
        det = detect_family(header.shapes.keys(), header.shapes)
        pred = _prediction_from_metadata(header.metadata) or ("v_prediction" if det.extra.get("v_pred") else None)
        return CheckpointInfo(path, "safetensors", det.family, size, source, path.name, _problem(det), pred)
    if ext in TORCH_EXTS:
        text = sniff_torch_pickle_keys(path)
        if text is None:
            det = Detection("unknown", "")  # an old-style pickle or a damaged file: decided at load time
        else:
            det = detect_in_pickle_text(text)
        pred = "v_prediction" if det.extra.get("v_pred") else None
        return CheckpointInfo(path, "ckpt", det.family, size, source, path.name, _problem(det) if text else "", pred)
    raise TiwizError(f"{path}: not a checkpoint (expected .safetensors, .ckpt or a diffusers folder)")


def find_checkpoints(roots=None, *, defaults: bool = True) -> list[CheckpointInfo]:
    """Find checkpoints in the usual places (A1111 `models/Stable-diffusion`, ComfyUI `models/checkpoints`, the HF
    cache, `/workspace`, `~`, cwd; all shallow) plus every folder or file in `roots`. Sorted by source, then name."""
    found: dict[str, CheckpointInfo] = {}
    if defaults:
        for base in default_roots():
            _scan_app_layouts(base, found)
            _scan_tree(base, "user", GENERIC_DEPTH, found, only_recognised=True)
        _scan_hf_cache(hf_cache_dir(), found)
    for root in roots or []:
        root = Path(root).expanduser()
        if root.is_file():
            _add(found, _safe_inspect(root, "user"))
        elif root.is_dir():
            if (root / "model_index.json").is_file():
                _add(found, _safe_inspect(root, "user"))
                continue
            _scan_app_layouts(root, found)
            if root.name == "hub" or (root / "hub").is_dir() and any((root / "hub").glob("models--*")):
                _scan_hf_cache(root if root.name == "hub" else root / "hub", found)
            _scan_tree(root, "user", KNOWN_DIR_DEPTH, found, only_recognised=False)
    order = {"a1111": 0, "comfyui": 1, "hf-cache": 2, "user": 3}
    return sorted(found.values(), key=lambda i: (order.get(i.source, 9), i.name.lower(), str(i.path)))


def _scan_app_layouts(base: Path, found: dict) -> None:
    candidates = [base]
    try:
        candidates += sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        pass
    for d in candidates:
        a1111 = d.joinpath(*A1111_SUBDIR)
        if a1111.is_dir():
            _scan_tree(a1111, "a1111", KNOWN_DIR_DEPTH, found, only_recognised=False)
        for sub in COMFYUI_SUBDIRS:
            comfy = d.joinpath(*sub)
            if comfy.is_dir():
                _scan_tree(comfy, "comfyui", KNOWN_DIR_DEPTH, found, only_recognised=False)


def _scan_hf_cache(hub: Path, found: dict) -> None:
    if not hub.is_dir():
        return
    for repo in sorted(hub.glob("models--*")):
        repo_id = repo.name[len("models--"):].replace("--", "/")
        for snap in sorted((repo / "snapshots").glob("*")):
            if (snap / "model_index.json").is_file():
                _add(found, _safe_inspect(snap, "hf-cache"))
                continue
            for f in sorted(snap.glob("*")):
                if f.suffix.lower() in CHECKPOINT_EXTS and f.is_file():
                    info = _safe_inspect(f, "hf-cache")
                    if info and info.family != "unknown":
                        info.name = f"{repo_id}/{f.name}"
                        _add(found, info)


def _scan_tree(root: Path, source: str, depth: int, found: dict, only_recognised: bool) -> None:
    """Breadth-first, bounded in depth and in folders visited."""
    queue = [(root, 0)]
    visited = 0
    while queue and visited < MAX_DIRS_PER_SCAN:
        folder, level = queue.pop(0)
        visited += 1
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            path = Path(entry.path)
            if is_file and path.suffix.lower() in CHECKPOINT_EXTS:
                info = _safe_inspect(path, source)
                if info and (not only_recognised or info.family != "unknown"):
                    _add(found, info)
            elif is_dir and entry.name not in SKIP_DIRS:
                if (path / "model_index.json").is_file():
                    info = _safe_inspect(path, source)
                    if info and (not only_recognised or info.family != "unknown"):
                        _add(found, info)
                elif level + 1 < depth:
                    queue.append((path, level + 1))


def _inspect_diffusers(path: Path, source: str) -> CheckpointInfo:
    size = 0
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        try:
            for f in (path / sub).iterdir():
                if f.is_file():
                    size += f.stat().st_size
        except OSError:
            pass
    index = _read_json(path / "model_index.json") or {}
    te = _read_json(path / "text_encoder" / "config.json")
    sched = _read_json(path / "scheduler" / "scheduler_config.json") or {}
    pred = sched.get("prediction_type") or "epsilon"
    cls = str(index.get("_class_name", ""))
    problem = ""
    if "XL" in cls or "text_encoder_2" in index:
        family = "sdxl"
        if is_sdxl_refiner_index(index):
            problem = "an SDXL refiner (no CLIP-L text encoder); train on an SDXL base model"
        elif not (path / "unet").is_dir() or not (path / "text_encoder_2").is_dir():
            problem = "no unet or text_encoder_2 folder"
    elif te is None:
        family, problem = "unknown", "no text_encoder/config.json"
    else:
        family = family_from_text_config(te)
        if not (path / "unet").is_dir():
            problem = "no unet folder"
    return CheckpointInfo(path, "diffusers", family, size, source, folder_display_name(path), problem, pred)


def is_sdxl_refiner_index(index: dict) -> bool:
    """An SDXL refiner's model_index.json: its class says so, or its `text_encoder` (CLIP-L) entry is null."""
    te = index.get("text_encoder", ["x"])
    return "Refiner" in str(index.get("_class_name", "")) or te is None or (isinstance(te, list) and te[:1] == [None])


def folder_display_name(path: Path) -> str:
    """A folder's name, or the repo id (`org/name`) for a Hugging Face cache snapshot."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/")
    return path.name


def family_from_text_config(te: dict) -> str:
    """SD2's OpenCLIP text encoder is 1024 wide with GELU; SD1's CLIP-L is 768 wide with quick GELU."""
    if te.get("hidden_size") == 1024 or te.get("hidden_act") == "gelu":
        return "sd2"
    return "sd1"


def _prediction_from_metadata(metadata: dict) -> str | None:
    from core.models.headers import TIWIZ_CONFIG_KEY

    raw = metadata.get(TIWIZ_CONFIG_KEY)
    if raw:
        try:
            return json.loads(raw)["scheduler"]["prediction_type"]
        except (ValueError, KeyError, TypeError):
            return None
    return None


def _problem(det: Detection) -> str:
    if det.family == "unknown":
        return det.note or "not a recognised Stable Diffusion checkpoint"
    return det.note  # a note on a known family (an SDXL refiner, an incomplete file) says why it cannot be used


def _strip(exc: TiwizError, path: Path) -> str:
    msg = str(exc)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _safe_inspect(path: Path, source: str) -> CheckpointInfo | None:
    try:
        return inspect_checkpoint(path, source)
    except (TiwizError, OSError):
        return None


def _add(found: dict, info: CheckpointInfo | None) -> None:
    if info is None:
        return
    key = os.path.realpath(info.path)
    if key not in found:
        found[key] = info


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
