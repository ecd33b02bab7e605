"""`tiwiz train`: every TrainConfig field as a flag (`--init-text`, `--save-every`, ...), plus `--config FILE.toml`
with the same keys in snake_case. Flags override the file. torch is imported only inside the handler."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from dataclasses import fields
from pathlib import Path

from core.training.config import CHOICES, HELP, TrainConfig

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
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
    return TrainConfig.from_dict(data)


def cmd_train(args: argparse.Namespace) -> int:
    """Train in a detached worker (the run folder is the output folder) and attach to it; `--detach` returns at
    once printing the run folder last; `--foreground` trains in this process. (--detach/--foreground are added to
    this parser by core.cli.runs.)"""
    config = config_from_args(args)
    if getattr(args, "foreground", False):
        return run_foreground(config, _out_dir(config))
    from core.cli.runs import start_detached_training

    return start_detached_training(config, detach=getattr(args, "detach", False))


def _out_dir(config: TrainConfig) -> Path:
    if config.output:
        return Path(config.output).expanduser()
    from core.runs.api import new_run_dir

    return new_run_dir(config.name)


def run_foreground(config: TrainConfig, out_dir, resume: bool = False) -> int:
    """Train in this process with a progress line. Ctrl-C (SIGINT) or SIGTERM saves and stops cleanly."""
    from core.events import CallbackSink
    from core.training.trainer import Trainer

    out_dir = Path(out_dir)
    progress = ProgressPrinter(sys.stderr)
    trainer = Trainer(config, out_dir, CallbackSink(progress))

    def on_signal(signum, frame):
        if trainer._stop_requested:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        progress.note("stopping after this step and saving (Ctrl-C again to abort without saving)")
        trainer.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = trainer.run(resume=resume)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        progress.end_line()
    print(f"{'finished' if summary['state'] == 'finished' else 'stopped'} at step {summary['step']}: "
          f"{out_dir / summary['pt']} and {out_dir / summary['safetensors']}")
    print(out_dir)
    return 0 if summary["state"] == "finished" else 130


class ProgressPrinter:
    """Turns trainer events into one rewritten progress line (on a terminal) plus lines for everything else."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.open_line = False
        self.last_print = 0.0
        self.val_loss = None

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "step":
            now = time.monotonic()
            last = event["step"] >= event["max_steps"]
            if self.tty and (now - self.last_print > 0.1 or last):
                self._line("\r" + self._progress(event) + "\x1b[K", newline=False)
                self.last_print = now
            elif not self.tty and (now - self.last_print > 5 or last):
                self._line(self._progress(event))
                self.last_print = now
        elif kind == "validation":
            self.val_loss = event["val_loss"]
        elif kind == "started":
            what = "resuming at step %d of %d" % (event["step"], event["max_steps"]) if event.get("resumed") \
                else f"training {event['name']} for {event['max_steps']} steps"
            self._line(f"{what} on {event['device']} ({event['dtype']}), {event['n_images']} images, "
                       f"model {event['model']}")
        elif kind == "checkpoint":
            self._line(f"saved {event['safetensors']} (step {event['step']})")
        elif kind == "preview":
            self._line(f"preview {event['path']}")
        elif kind in ("warning", "error"):
            self._line(f"{kind}: {event['message']}")

    def note(self, message: str) -> None:
        self._line(message)

    def _progress(self, e: dict) -> str:
        step, total, it_s = e["step"], e["max_steps"], e.get("it_s") or 0.0
        eta = (total - step) / it_s if it_s > 0 else math.inf
        width = 20
        filled = int(width * step / max(total, 1))
        parts = [f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total}", f"{it_s:.2f} it/s",
                 f"ETA {_duration(eta)}", f"loss {e.get('loss_avg', e['loss']):.4f}"]
        if self.val_loss is not None:
            parts.append(f"val {self.val_loss:.4f}")
        parts.append(f"lr {e['lr']:.2g}")
        return "  ".join(parts)

    def _line(self, text: str, newline: bool = True) -> None:
        if newline and self.open_line and not text.startswith("\r"):
            self.stream.write("\n")
            self.open_line = False
        self.stream.write(text + ("\n" if newline else ""))
        self.open_line = not newline
        self.stream.flush()

    def end_line(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
