"""Odd entries in the source folder (issue 13, item 6): a symlink loop, a dangling symlink, a FIFO and a file name
that is not UTF-8 each get a reason, the run goes on, report.json is written, and `--jsonl` emits the events."""

import json
import os
import subprocess
import sys
from pathlib import Path

from core.prep.options import PreprocessOptions
from core.prep.preprocess import run_preprocess
from tests.preprocess_cases import photo

ROOT = Path(__file__).resolve().parent.parent
BAD_NAME = b"caf\xe9-latin1.jpg"  # a Latin-1 name: not valid UTF-8


def make_odd_src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    photo("astronaut", (96, 72)).save(src / "good.jpg")
    photo("coffee", (96, 72)).save(os.path.join(os.fsencode(src), BAD_NAME))
    os.symlink("loop-b.jpg", src / "loop-a.jpg")
    os.symlink("loop-a.jpg", src / "loop-b.jpg")
    os.symlink("missing.jpg", src / "dangling.jpg")
    os.mkfifo(src / "pipe.jpg")
    return src


def test_every_odd_entry_gets_a_reason_and_the_run_goes_on(tmp_path):
    src = make_odd_src(tmp_path)
    report = run_preprocess(src, tmp_path / "out", PreprocessOptions(width=64, height=64), workers=1)
    saved = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    reasons = {s["file"]: s.get("reason", "") for s in saved["sources"]}
    assert "symlink loop" in reasons["loop-a.jpg"] and "symlink loop" in reasons["loop-b.jpg"]
    assert "missing.jpg" in reasons["dangling.jpg"] and "does not exist" in reasons["dangling.jpg"]
    assert "FIFO" in reasons["pipe.jpg"]
    assert len(report.written) == 2  # good.jpg and the Latin-1 name
    latin = [s for s in saved["sources"] if s["file"].startswith("caf")]
    assert latin and latin[0]["status"] == "written" and latin[0]["file"] == "caf\\xe9-latin1.jpg"
    for out in latin[0]["outputs"]:
        assert (tmp_path / "out" / out["image"]).is_file()


def test_jsonl_emits_the_skips(tmp_path):
    src = make_odd_src(tmp_path)
    out = subprocess.run([sys.executable, "-m", "core.cli", "preprocess", str(src), str(tmp_path / "out"),
                          "--width", "64", "--height", "64", "--workers", "1", "--jsonl"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    skipped = {e["file"] for e in events if e["type"] == "skipped"}
    assert {"loop-a.jpg", "loop-b.jpg", "dangling.jpg", "pipe.jpg"} <= skipped
    assert events[-1]["type"] == "finished"
