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
from core.safe_text import safe_text

# Order here is the order in `tiwiz --help`.
COMMAND_MODULES = [
    "core.cli.wizard",     # wizard (the console script opens it before this parser)
    "core.cli.serve",      # serve (the wizard and the runs' previews in a browser)
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
    _describe_every_command(parser)
    return parser


def _describe_every_command(parser: argparse.ArgumentParser) -> None:
    """A command registered with a `help` line but no `description` gets that line as its description, so
    `tiwiz COMMAND --help` always says what the command does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, child in action.choices.items():
                line = helps.get(name)
                if not child.description and line:
                    child.description = line[:1].upper() + line[1:] + ("" if line.endswith(".") else ".")
                _describe_every_command(child)


def subcommand_parsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Every command's parser, nested ones (`queue add`) under "queue add"."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, prefix: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found[f"{prefix}{name}"] = child
                    walk(child, f"{prefix}{name} ")

    walk(parser, "")
    return found


def _parse(parser: argparse.ArgumentParser, argv) -> argparse.Namespace:
    """parse_args, except that an unknown flag is reported with the usage of the (sub)command it was given to, and
    the nearest real flag, instead of the top level's usage."""
    import difflib

    args, extra = parser.parse_known_args(argv)
    if extra:
        words = list(sys.argv[1:] if argv is None else argv)
        parsers = subcommand_parsers(parser)
        target, name = parser, ""
        for i in range(len(words)):  # the deepest command named on the line
            candidate = " ".join(w for w in words[: i + 1] if not w.startswith("-"))
            if candidate in parsers:
                target, name = parsers[candidate], candidate
        flags = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
        hint = ""
        first = next((e for e in extra if e.startswith("-")), None)
        if first:
            close = difflib.get_close_matches(first.split("=")[0], flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        target.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C must reach the viewer even when we were started with SIGINT ignored (e.g. from a background job of a
    # non-interactive shell, which ignores it and passes that on through exec).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TiwizError as exc:
        print(f"tiwiz: error: {safe_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiwiz: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `tiwiz runs | head -1`: the reader is gone; end as `ls | head` does, quietly
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the exit-time flush of stdout must not fail again
        return 141
