"""`tiwiz --help` lists every command including `wizard`; every command (nested ones too) has a description; a typo
in a command's flag prints that command's usage and the nearest flag."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from core.cli import build_parser, subcommand_parsers

ROOT = str(Path(__file__).resolve().parents[1])


def tiwiz(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)


def test_every_command_is_described_and_wizard_is_listed():
    parser = build_parser()
    commands = subcommand_parsers(parser)
    assert "wizard" in commands and "train" in commands
    assert [name for name, p in commands.items() if not (p.description or "").strip()] == []
    assert "wizard" in parser.format_help()


def test_a_typo_in_a_flag_prints_the_commands_usage():
    done = tiwiz("train", "--stepz", "3")
    assert done.returncode == 2
    assert "usage: tiwiz train" in done.stderr and "did you mean --steps?" in done.stderr
    done = tiwiz("runs", "--jsn")
    assert "usage: tiwiz runs" in done.stderr and "--json" in done.stderr
