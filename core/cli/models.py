"""`tiwiz demo-model`, `tiwiz models` and `tiwiz to-single-file`."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import TiwizError
from core.safe_text import safe_print


def register(sub) -> None:
    p = sub.add_parser(
        "demo-model", help="write the tiny demo model (an ordinary diffusers folder)",
        description="Write the tiny SD1-shaped demo model with the real CLIP tokenizer as a diffusers folder. "
                    "--random writes random weights drawn from --seed (same seed, same bytes). --family sdxl writes "
                    "a tiny random-weight SDXL-shaped model (both text encoders and tokenizers, a text-time UNet).",
    )
    p.add_argument("dir", help="output folder (must not exist or be empty, unless --force)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random weights (default 0)")
    p.add_argument("--random", action="store_true", help="random weights instead of the shipped demo weights")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder, replacing model files")
    p.add_argument("--family", choices=("sd1", "sdxl"), default="sd1",
                   help="sd1: the demo model (default); sdxl: a tiny random-weight SDXL-shaped model for trying "
                        "SDXL runs and for tests")
    p.set_defaults(func=cmd_demo_model)

    p = sub.add_parser(
        "models", help="list Stable Diffusion checkpoints found on this machine",
        description="Find checkpoints in A1111 (models/Stable-diffusion), ComfyUI (models/checkpoints), the "
                    "Hugging Face cache, /workspace, ~ and the current folder, plus any ROOTS given. Reads headers "
                    "only, so it is fast.",
    )
    p.add_argument("roots", nargs="*", help="extra folders or files to look in")
    p.add_argument("--only", action="store_true", help="look only in ROOTS, not in the usual places")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    p.add_argument("--all", action="store_true", help="also list files that cannot be used (LoRAs, refiners, broken)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "to-single-file", help="convert a diffusers folder to one A1111-style .safetensors/.ckpt",
        description="Write a diffusers SD1/SD2/SDXL folder as one checkpoint in the original key layout, loadable by "
                    "A1111, ComfyUI and tiwiz. The suffix of OUT picks the format.",
    )
    p.add_argument("model", help="diffusers model folder")
    p.add_argument("out", help="output file ending in .safetensors (recommended) or .ckpt")
    p.add_argument("--half", action="store_true", help="store fp16 weights (half the size)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_to_single_file)


def cmd_demo_model(args) -> int:
    dest = Path(args.dir)
    if dest.exists() and not dest.is_dir():
        raise TiwizError(f"{dest}: exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not args.force:
        raise TiwizError(f"{dest}: the folder is not empty; choose a new folder or pass --force")
    import time

    from core.atomic import give_umask_mode
    from core.models import builtin as demo
    from core.models.loader import quiet_libraries

    quiet_libraries()
    started = time.time()
    if getattr(args, "family", "sd1") == "sdxl":
        demo.write_tiny_sdxl_model(dest, seed=args.seed)
        give_umask_mode(dest, started)  # the weights' writer makes them 0600
        safe_print(f"wrote the tiny SDXL-shaped model (random weights, seed {args.seed}) to {dest}")
        return 0
    if args.random:
        demo.write_random_demo_model(dest, seed=args.seed)
        kind = f"random weights, seed {args.seed}"
    else:
        try:
            demo.write_demo_model(dest)
            kind = "shipped demo weights"
        except TiwizError as exc:  # shipped weights not installed: the random model still works everywhere
            safe_print(f"note: {exc}; writing random weights instead")
            demo.write_random_demo_model(dest, seed=args.seed)
            kind = f"random weights, seed {args.seed}"
    give_umask_mode(dest, started)
    safe_print(f"wrote the demo model ({kind}) to {dest}")
    return 0


def cmd_models(args) -> int:
    from core.models.find import find_checkpoints

    found = find_checkpoints(args.roots, defaults=not args.only)
    if not args.all:
        found = [i for i in found if i.usable or i.source in ("a1111", "comfyui") or i.family == "sdxl"]
    if args.json:
        for info in found:
            safe_print(json.dumps(info.to_dict()))
        return 0
    if not found:
        safe_print("no checkpoints found" + (" (try: tiwiz models /path/to/models)" if not args.roots else ""))
        return 0
    rows = [(i.name, family_label(i), i.kind, human_size(i.size_bytes), i.source, str(i.path)) for i in found]
    heads = ("NAME", "FAMILY", "KIND", "SIZE", "SOURCE", "PATH")
    widths = [min(40, max(len(h), *(len(r[c]) for r in rows))) for c, h in enumerate(heads[:-1])]
    line = lambda cells: "  ".join(c[:w].ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]  # noqa: E731
    safe_print(line(heads))
    for row in rows:
        safe_print(line(row))
    return 0


def cmd_to_single_file(args) -> int:
    from core.models.loader import quiet_libraries
    from core.models.single_file import save_single_file

    quiet_libraries()
    out = save_single_file(args.model, args.out, half=args.half, overwrite=args.overwrite)
    safe_print(f"wrote {out} ({human_size(out.stat().st_size)})")
    return 0


def family_label(info) -> str:
    names = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "unknown": "?"}
    label = names.get(info.family, info.family)
    if info.family in ("sd2", "sdxl") and info.prediction_type == "v_prediction":
        label += " v"
    if info.problem:
        label += f" ({info.problem})"
    return label


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
