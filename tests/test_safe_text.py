"""Terminal escape injection (issue 13, item 9): an event message or a run folder name holding escape sequences is
shown as visible escapes by `tiwiz attach`, `tiwiz runs` and error messages, never sent raw to the terminal."""

import json
import subprocess
import sys
from pathlib import Path

from core.safe_text import safe_text

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "\x1b]0;TITLE\x07\x1b[2J"


def test_safe_text_escapes_controls_and_keeps_newlines():
    assert safe_text(f"a{HOSTILE}b") == "a\\x1b]0;TITLE\\x07\\x1b[2Jb"
    assert safe_text("one\ntwo\tthree") == "one\ntwo\tthree"
    assert safe_text("one\ntwo", keep_newlines=False) == "one\\x0atwo"
    assert safe_text("x\rcover\x9b2J\u202eevil") == "x\\x0dcover\\u009b2J\\u202eevil"
    assert safe_text("café ✓ 日本") == "café ✓ 日本"


def _hostile_run(root: Path) -> Path:
    run = root / "evil"
    run.mkdir(parents=True)
    events = [
        {"type": "started", "time": 1.0, "step": 0, "max_steps": 2, "name": f"n{HOSTILE}", "device": "cpu",
         "precision": "fp32", "n_images": 1, "model": "m"},
        {"type": "warning", "time": 2.0, "step": 1, "message": f"skipped image {HOSTILE}.png"},
        {"type": "error", "time": 3.0, "message": f"boom {HOSTILE}"},
        {"type": "exit", "time": 4.0, "state": "failed", "step": 1, "reason": f"boom {HOSTILE}"},
    ]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "status.json").write_text(json.dumps({"state": "failed", "name": f"n{HOSTILE}", "step": 1,
                                                  "max_steps": 2, "reason": f"boom {HOSTILE}"}))
    return run


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "core.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, stdin=subprocess.DEVNULL)


def test_attach_runs_and_errors_never_print_escapes(tmp_path):
    run = _hostile_run(tmp_path / "runs")
    for done in (_cli("attach", run, "--no-follow"), _cli("runs", "--root", tmp_path / "runs"),
                 _cli("attach", tmp_path / f"missing{HOSTILE}")):
        shown = done.stdout + done.stderr
        assert "\x1b" not in shown and "\x07" not in shown, repr(shown)
    assert "\\x1b]0;TITLE" in _cli("attach", run, "--no-follow").stdout
