"""`tiwiz inspect FILE [FILE2] [--model M]`: an embedding's vectors, their norms against the vocabulary's, nearest
vocabulary tokens, and the cosine between two embeddings. torch is imported only inside the handler."""

from __future__ import annotations

import argparse
import json
import sys

from core.safe_text import safe_print

EPILOG = """examples:
  tiwiz inspect runs/cat/zxq-cat.safetensors --model ./sd15
  tiwiz inspect zxq-cat.pt runs/cat/embeddings/zxq-cat-500.safetensors     # cosine between the two
  tiwiz inspect zxq-cat.pt --model ./sd15 --json
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "inspect", help="show an embedding's vectors, norms and nearest tokens", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show what an embedding file holds: each vector's norm (and, with --model, where it lies in the "
                    "vocabulary's norm distribution and its nearest vocabulary tokens by cosine). A norm far above "
                    "the vocabulary's swamps the rest of the prompt. Given a second file, also the cosine between "
                    "the two. Reads A1111 .pt/.png, diffusers, kohya, OneTrainer and bare-tensor files.")
    p.add_argument("file", metavar="FILE", help="an embedding file (.safetensors, .pt, .bin or an A1111 .png)")
    p.add_argument("other", metavar="FILE2", nargs="?", help="a second embedding to compare with (cosine)")
    p.add_argument("--model", metavar="M", help="the base model (diffusers folder or .safetensors/.ckpt) whose "
                   "vocabulary to compare with")
    p.add_argument("--top", type=int, default=5, metavar="K", help="nearest tokens per vector (default 5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.embeddings.inspect import format_report, inspect_file
    from core.errors import TiwizError

    if args.top < 1:
        raise TiwizError(f"--top: must be >= 1 (got {args.top})")
    report = inspect_file(args.file, model=args.model, other=args.other, k=args.top)
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
    else:
        safe_print(_safe(format_report(report)))
    return 0


def _safe(text: str) -> str:
    """File names and stored names are user-controlled: no terminal control characters."""
    try:
        from core.safe_text import safe_text  # hardening's helper, where present
    except ImportError:
        return "".join(ch if ch == "\n" or ch.isprintable() else "?" for ch in text)
    return "\n".join(safe_text(line) for line in text.split("\n"))
