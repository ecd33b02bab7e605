"""The headless CLI (`tiwiz COMMAND ...`). Each command lives in its own module with `register(subparsers)`.

Heavy imports (torch, diffusers) happen inside command handlers, never at module level, so `tiwiz --help` is instant
and the TUI can import this package.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from core import __version__
from core.errors import TiwizError

# Order here is the order in `tiwiz --help`.
COMMAND_MODULES = [
    "core.cli.train",      # train, demo
    "core.cli.runs",       # attach, runs, stop, resume
    "core.cli.queue",      # queue (add, remove, retry, run, stop)
    "core.cli.preprocess", # preprocess
    "core.cli.doctor",     # doctor
    "core.cli.inspect",    # inspect
    "core.cli.models",     # demo-model, models
    "core.cli.demo",       # demo
    "core.cli.install",    # install
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiwiz",
        description="Train Stable Diffusion textual-inversion embeddings. Run `tiwiz` with no command for the wizard.",
    )
    parser.add_argument("--version", action="version", version=f"tiwiz {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must reach the viewer even when we were started with SIGINT ignored (e.g. from a background job of a
    # non-interactive shell, which ignores it and passes that on through exec).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TiwizError as exc:
        print(f"tiwiz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiwiz: interrupted", file=sys.stderr)
        return 130
