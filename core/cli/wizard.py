"""`tiwiz wizard`: listed in `tiwiz --help`. The console script opens the wizard itself (tui.main) before this parser
runs; `python -m core.cli wizard` hands over to it in a fresh interpreter, so core never imports textual."""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "wizard", help="open the keyboard-driven wizard (the same as `tiwiz` with no command)",
        description="Open the keyboard-driven wizard: pick a model, prepare and caption images, set up the embedding, "
                    "train in a detached worker and watch it. `tiwiz wizard --help` lists its options "
                    "(--demo, --attach RUN, --runs DIR, --fresh, --serve, --image-protocol).",
        add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="options for the wizard")
    p.set_defaults(func=cmd_wizard)


def cmd_wizard(args) -> int:
    argv = [sys.executable, "-m", "tui.main", "wizard", *args.args]
    os.execv(sys.executable, argv)
    return 0  # not reached
