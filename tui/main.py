"""The `tiwiz` console script: no command opens the wizard; any command goes to the headless CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("wizard",):
        from tui.app import run_app

        return run_app(argv[1:])
    from core.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
