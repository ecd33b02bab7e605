"""`tiwiz doctor DIR`: check a training folder (duplicates, sizes, captions, mirrored faces, image count)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check a training image folder",
        description="Check a training folder: near-duplicates, images below the training size, extreme aspect "
                    "ratios, missing/empty/over-long captions, tags (the trigger word already a tag, a tag on "
                    "nearly every image, images with very few tags), mirrored copies of faces, too few images. "
                    "Exit status 0 when nothing is an error, 1 otherwise.",
    )
    p.add_argument("folder", metavar="DIR", help="folder of training images (captions are <stem>.txt beside them)")
    p.add_argument("--width", type=int, default=512, help="training width (default 512)")
    p.add_argument("--height", type=int, default=512, help="training height (default 512)")
    p.add_argument("--buckets", action="store_true", help="show the aspect-ratio bucket of each image (as "
                   "`tiwiz train --buckets` assigns them: kohya's buckets, no upscaling, sides 256-1024)")
    p.add_argument("--trigger", metavar="WORD", default="", help="the embedding's trigger word (its name): "
                   "warn when the tag captions already use it as a tag")
    p.add_argument("--json", action="store_true", help="print {folder, findings, summary} as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from core.prep.doctor import diagnose, summary

    bucketer = None
    if getattr(args, "buckets", False):
        from core.prep.buckets import Bucketer

        bucketer = Bucketer((args.width, args.height))
    findings = diagnose(args.folder, width=args.width, height=args.height, bucketer=bucketer,
                        trigger=getattr(args, "trigger", ""))
    counts = summary(findings)
    if args.json:
        json.dump({"folder": args.folder, "width": args.width, "height": args.height,
                   "findings": [f.to_dict() for f in findings], "summary": counts},
                  sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
    else:
        _print_table(args.folder, findings, counts)
    return 1 if counts["error"] else 0


def _print_table(folder: str, findings, counts) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from core.safe_text import safe_text

    console = Console()
    if not findings:
        console.print(f"[green]✓[/] {escape(safe_text(folder))}: no problems found.")
        return
    style = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    table = Table(title=f"tiwiz doctor: {escape(safe_text(folder))}", show_lines=False, expand=False)
    table.add_column("severity", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("files", overflow="fold", max_width=40)
    table.add_column("message", overflow="fold")
    for f in findings:
        table.add_row(f"[{style[f.severity]}]{f.severity}[/]", f.code, escape(safe_text("\n".join(f.files))),
                      escape(safe_text(f.message)))  # file names are user-controlled: no markup, no escapes
    console.print(table)
    console.print(", ".join(f"{n} {s}{'s' if n != 1 else ''}" for s, n in counts.items()))
