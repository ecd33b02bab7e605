"""The `tiwiz` console script: no command opens the wizard; any command goes to the headless CLI."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `tiwiz`, `tiwiz --demo`, `tiwiz --attach RUN` ... open the wizard; `tiwiz wizard ...` is the explicit form.
    wizard_flag = bool(argv) and argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")
    if not argv or wizard_flag or argv[0] == "wizard":
        from tui.app import run_app

        return run_app(argv, prog="tiwiz") if wizard_flag or not argv else run_app(argv[1:], prog="tiwiz wizard")
    from core.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
