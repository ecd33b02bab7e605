"""`tiwiz install EMB [--to a1111|comfyui|invokeai|DIR]`: copy a finished embedding into an image UI's folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.safe_text import safe_print


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "install", help="copy an embedding into the embeddings folder of A1111, ComfyUI or InvokeAI",
        description="Copy a finished embedding into an image UI's embeddings folder, atomically. Installs are looked "
                    "for in /workspace, the home folder, the current folder and $INVOKEAI_ROOT. A1111 and ComfyUI "
                    "get the .safetensors file; InvokeAI gets the .pt for SD1/SD2 (a .safetensors named alone: in "
                    "the emb_params layout InvokeAI reads) and the .safetensors for SDXL. A file named alone is the "
                    "file installed; what is not an embedding is refused. "
                    "Example: tiwiz install runs/my-style-20250101-120000 --to comfyui",
    )
    p.add_argument("embedding", metavar="EMB",
                   help="an embedding file (.safetensors, .pt), or a finished run folder (its final NAME.safetensors)")
    p.add_argument("--to", metavar="a1111|comfyui|invokeai|DIR", default=None,
                   help="where to: an app found on this machine, or an embeddings folder (default: the only "
                        "install found)")
    p.add_argument("--root", dest="roots", metavar="DIR", type=Path, action="append", default=None,
                   help="look for installs under DIR instead of the usual places (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a file of the same name in the folder")
    p.add_argument("--list", action="store_true", help="list the embeddings folders found, and copy nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.install import find_targets, install

    if args.list:
        targets = find_targets(args.roots)
        for t in targets:
            safe_print(f"{t.app:<9} {t.path}")
        if not targets:
            safe_print("no A1111, ComfyUI or InvokeAI embeddings folder found")
        return 0
    target, written = install(args.embedding, args.to, overwrite=args.overwrite, roots=args.roots)
    where = f"{target.app} " if target.app != "folder" else ""
    safe_print(f"installed {written.name} into {where}{written.parent}")
    if target.app == "ComfyUI":
        safe_print(f"use it in a prompt as embedding:{written.stem}")
    elif target.app in ("A1111", "InvokeAI"):
        safe_print(f"refresh the embeddings list in {target.app}, then type {written.stem} in a prompt")
    return 0
