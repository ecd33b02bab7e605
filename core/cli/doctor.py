"""`tiwiz doctor DIR`: check a training folder (duplicates, sizes, captions, mirrored faces, image count).
`tiwiz doctor --run RUN`: rank a run's training images by how well its embedding fits them (the images that fight
the concept; core.training.image_ranking), written to the run folder."""

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
    p.add_argument("folder", metavar="DIR", nargs="?",
                   help="folder of training images (captions are <stem>.txt beside them)")
    p.add_argument("--run", metavar="RUN", help="instead of DIR: a finished or stopped run (folder, or name under the "
                   "runs folder). Ranks its training images by the fixed-seed loss under its final embedding "
                   "against the others and names the worst few with a reason (another subject, a bad crop, a "
                   "caption that already names the concept); loads the run's model, so it takes a GPU or a while")
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

    if bool(getattr(args, "run", None)) == bool(args.folder):
        from core.errors import TiwizError

        raise TiwizError("give a training folder DIR or --run RUN (one of them)")
    if args.run:
        return _rank_run(args)
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


def _rank_run(args: argparse.Namespace) -> int:
    """`doctor --run`: rank the run's images, write image_ranking.json into it, print the ranking."""
    from core.errors import TiwizError
    from core.runs import folder
    from core.safe_text import safe_print
    from core.training.image_ranking import rank_run_folder, write_ranking

    run_dir = folder.resolve_run(args.run)
    if folder.inspect_run(run_dir).alive:
        raise TiwizError(f"{run_dir} is still training; its images are ranked when it finishes (or stop it first)")
    tty = sys.stderr.isatty() and not args.json

    def progress(done: int, total: int) -> None:
        if tty:
            sys.stderr.write(f"\rranking images {done}/{total}")
            sys.stderr.flush()

    ranking = rank_run_folder(run_dir, progress=progress)
    if tty:
        sys.stderr.write("\n")
    write_ranking(run_dir, ranking)
    if args.json:
        json.dump(ranking.to_json(), sys.stdout, ensure_ascii=False, indent=1)
        sys.stdout.write("\n")
        return 0
    safe_print(f"{run_dir}: {len(ranking.images)} images ranked under {ranking.embedding} (step {ranking.step}), "
               f"worst first; prompt {ranking.prompt!r}")
    for im in ranking.images:
        mark = "!" if im.flagged else " "
        safe_print(f" {mark} {im.score:6.2f}  gain {im.gain:+.3f}  {im.image}" + ("  (held out)" if im.held_out else ""))
        if im.flagged:
            safe_print(f"      {im.message}")
    flagged = ranking.flagged
    safe_print(f"{len(flagged)} image(s) fight the concept" if flagged else "no image stands out from the others")
    return 0

