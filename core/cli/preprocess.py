"""`tiwiz preprocess SRC DEST [options]`: turn a folder of photos into fixed-size training images."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from core.prep.options import PreprocessOptions
from core.safe_text import safe_print, safe_text


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "preprocess", help="crop/resize a folder of images into a training set (split, focal crop, flip, captions)",
        description="Crop and resize every image in SRC to WIDTH×HEIGHT PNGs in DEST, with captions beside them "
                    "(sentences from BLIP with --blip, booru tags from a WD14 tagger with --tagger). "
                    "SRC is never modified. Exit status: 0 when at least one image was written, 1 when none was, "
                    "2 for a usage problem.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", metavar="SRC", help="folder of source images (not recursive)")
    p.add_argument("dest", metavar="DEST", help="output folder (created; must not be SRC or inside it)")
    for f in fields(PreprocessOptions):
        meta = f.metadata
        kwargs = {"dest": f.name, "help": meta["help"]}
        if isinstance(f.default, bool):
            kwargs.update(action=argparse.BooleanOptionalAction, default=f.default)  # --flip / --no-flip
        else:
            kwargs.update(type=type(f.default), default=f.default)
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        if f.name in ("blip", "tagger"):
            kwargs["metavar"] = "MODEL"
        elif f.name == "exclude_tags":
            kwargs["metavar"] = "TAGS"
        p.add_argument(meta["cli"], **kwargs)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--jsonl", action="store_true", help="print events as JSON lines on stdout (for the TUI)")
    p.set_defaults(func=handle)


def handle(args) -> int:
    from core.errors import TiwizError
    from core.prep.preprocess import run_preprocess

    values = {f.name: getattr(args, f.name) for f in fields(PreprocessOptions)}
    options = PreprocessOptions(**values).validate()
    if args.workers is not None and args.workers < 1:
        raise TiwizError("--workers must be at least 1.")
    if args.jsonl:
        from core.events import StdoutJsonSink

        sink = StdoutJsonSink()
        try:
            report = run_preprocess(args.src, args.dest, options, sink, workers=args.workers)
        except TiwizError as exc:
            sink.emit("error", message=str(exc))
            raise
        return report.exit_code
    return _run_with_progress(args, options)


def _run_with_progress(args, options) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from core.events import CallbackSink
    from core.prep.preprocess import run_preprocess

    err = Console(stderr=True, highlight=False)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[file]}", style="dim"), console=err, transient=True)
    tasks: dict[str, int] = {}
    log: list[tuple[str, str]] = []

    def on_event(event: dict) -> None:
        kind = event["type"]
        if kind == "progress":
            phase = event.get("phase", "images")
            if phase not in tasks:
                label = "Preprocessing" if phase == "images" else "Captioning"
                tasks[phase] = progress.add_task(label, total=event["total"], file="")
            progress.update(tasks[phase], completed=event["done"], total=event["total"], file=safe_text(event.get("file", "")))
        elif kind == "skipped":
            log.append(("skip", f"{event['file']}: {event['reason']}"))
        elif kind == "warning" and "file" not in event:
            log.append(("warn", event["message"]))

    with progress:
        report = run_preprocess(args.src, args.dest, options, CallbackSink(on_event), workers=args.workers)

    out = Console(highlight=False, soft_wrap=True)
    sources = len(report.sources)
    used = sum(1 for s in report.sources if s["status"] == "written")
    out.print(f"Wrote {len(report.written)} image(s) from {used} of {sources} source file(s) to "
              f"{escape(safe_text(report.dest))}")
    captions = sum(len(s.get("captions", [])) for s in report.sources)
    if captions:
        out.print(f"Wrote {captions} caption file(s).")
    if report.skipped:
        out.print(f"[yellow]Skipped {len(report.skipped)} file(s):[/]")
        for item in report.skipped:
            out.print(safe_text(f"  {item['file']}: {item['reason']}"), markup=False)
    for message in report.warnings:
        out.print(f"[yellow]warning:[/] {escape(safe_text(message))}")
    out.print(f"Details: {escape(safe_text(report.dest))}/report.json")
    if not report.written:
        safe_print("tiwiz: no image was written.", file=sys.stderr)
    return report.exit_code
