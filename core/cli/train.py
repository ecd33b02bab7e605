"""`tiwiz train`: every TrainConfig field as a flag (`--init-text`, `--save-every`, ...), plus `--config FILE.toml`
with the same keys in snake_case. Flags override the file. torch is imported only inside the handler."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from core.runs.run_events import RunPhase
from core.errors import FieldError
from core.training.config import CHOICES, HELP, TrainConfig
from core.safe_text import safe_print

EPILOG = """examples:
  tiwiz train --model ./sd15 --data ./my-cat --name zxq-cat --init-text cat --vectors 4 --steps 2000
  tiwiz train --config cat.toml --lr "0.005:200, 1e-3:1000, 5e-4" --preview-every 100
  tiwiz train --config cat.toml --output runs/cat-v2 --overwrite
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a textual-inversion embedding", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a textual-inversion embedding. The output folder gets NAME.pt/.safetensors, "
                    "embeddings/NAME-STEP.*, previews/NAME-STEP.png, loss.csv, config.toml and state/ for resume.")
    add_train_arguments(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--detach", action="store_true",
                      help="start the training in the background and return; prints the run folder last")
    mode.add_argument("--foreground", action="store_true",
                      help="train in this process instead of a detached worker (Ctrl-C stops it; the run folder is "
                           "written as for every run, so `tiwiz runs` and `tiwiz attach` see it)")
    parser.set_defaults(func=cmd_train)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None = not given), plus --config."""
    parser.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file (flags override it)")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = HELP.get(f.name, "")
        if f.default not in ("", None):
            help_text += f" (default: {f.default})"
        if isinstance(f.default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in CHOICES:
            parser.add_argument(flag, dest=f.name, choices=CHOICES[f.name], default=None, help=help_text)
        else:
            kind = {int: int, float: float}.get(type(f.default), str)
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text,
                                metavar=f.name.upper())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file (if any) with every given flag on top, validated."""
    data: dict = {}
    if getattr(args, "config", None):
        data = TrainConfig.from_toml(args.config, validate=False).to_dict()
    given = set()
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
            given.add(f.name)
    try:
        return TrainConfig.from_dict(data)
    except FieldError as exc:  # a value typed on the command line: name the flag the user typed
        prefix = f"{exc.field}:"
        if exc.field in given and str(exc).startswith(prefix):
            flag = "--" + exc.field.replace("_", "-")
            raise FieldError(exc.field, flag + str(exc)[len(exc.field):]) from None
        raise


def cmd_train(args: argparse.Namespace) -> int:
    """Train in a detached worker (the run folder is the output folder) and attach to it; `--detach` returns at
    once printing the run folder last; `--foreground` trains in this process (same run folder files)."""
    config = config_from_args(args)
    from core.training import preflight

    preflight.check(config, cli=True)  # before any worker or run folder: these would fail only after model loading
    if args.foreground:
        return run_foreground(config)
    from core.cli.runs import start_detached_training

    return start_detached_training(config, detach=args.detach)


def run_foreground(config: TrainConfig, root=None) -> int:
    """Train in this process with the progress display. The run folder gets config.toml, events.jsonl, status.json
    and worker.log exactly as a detached worker writes them, so `tiwiz runs` and `tiwiz attach` see the run.
    Ctrl-C (SIGINT) or SIGTERM saves and stops; a second Ctrl-C aborts without saving."""
    from core.cli.progress import ProgressView
    from core.runs import api as runapi
    from core.runs import run_events as ev
    from core.runs.worker import train_in_process

    config = runapi.prepare_run(config, root=root)
    run_dir = Path(config.output)
    progress = ProgressView(run_dir, out=sys.stderr)

    def observe(event) -> None:
        progress.live(event)
        if isinstance(event, ev.Stopping):
            progress.note("(Ctrl-C again aborts without saving)")

    try:
        code = train_in_process(run_dir, observer=observe)
    finally:
        progress.end()
    state = progress.state
    if code != 0:
        safe_print(f"failed at step {state.step}: {state.error or state.reason or 'see ' + str(run_dir / 'worker.log')}",
              file=sys.stderr)
        safe_print(run_dir)
        return 1
    word = "finished" if state.phase == RunPhase.FINISHED else "stopped"
    files = " and ".join(str(run_dir / f) for f in (state.final_pt, state.final_safetensors) if f)  # SDXL: no .pt
    safe_print(f"{word} at step {state.step}: {files}")
    safe_print(run_dir)
    return 0 if state.phase == RunPhase.FINISHED else 130
