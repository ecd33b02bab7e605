"""`tiwiz preprocess` as a real subprocess: exit codes, --jsonl events, no tracebacks."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.preprocess_cases import photo

TIWIZ = shutil.which("tiwiz", path=str(Path(sys.executable).parent)) or shutil.which("tiwiz")


def tiwiz(*args, timeout=120):
    cmd = [TIWIZ, *args] if TIWIZ else [sys.executable, "-m", "core.cli", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_exit_codes_and_messages(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    photo("coffee", (96, 64)).save(good / "coffee.jpg")
    (good / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (bad / "zero.png").write_bytes(b"")
    (bad / "text.jpg").write_text("hello")

    ok = tiwiz("preprocess", str(good), str(tmp_path / "out1"), "--width", "64", "--height", "64", "--workers", "2")
    assert ok.returncode == 0, ok.stderr
    assert "Wrote 1 image(s) from 1 of 2 source file(s)" in ok.stdout
    assert "broken.jpg:" in ok.stdout and (tmp_path / "out1" / "coffee.png").is_file()

    none = tiwiz("preprocess", str(bad), str(tmp_path / "out2"), "--width", "64", "--height", "64")
    assert none.returncode == 1
    assert "zero.png: empty file (0 bytes)" in none.stdout and "no image was written" in none.stderr
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["written"] == 0

    inside = tiwiz("preprocess", str(good), str(good / "out"))
    assert inside.returncode == 2 and "inside SRC" in inside.stderr
    missing = tiwiz("preprocess", str(tmp_path / "nope"), str(tmp_path / "out3"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    odd = tiwiz("preprocess", str(good), str(tmp_path / "out4"), "--width", "500")
    assert odd.returncode == 2 and "multiple of 8" in odd.stderr
    for result in (ok, none, inside, missing, odd):
        assert "Traceback" not in result.stdout + result.stderr


def test_jsonl_events_parse(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("astronaut", "chelsea", "rocket"):
        photo(name, (96, 64)).save(src / f"{name}.png")
    (src / "empty.jpg").write_bytes(b"")
    result = tiwiz("preprocess", str(src), str(tmp_path / "out"), "--width", "64", "--height", "64", "--flip",
                   "--jsonl", "--workers", "2")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]  # every stdout line is one JSON event
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-1] == "finished"
    assert all(isinstance(e["time"], float) for e in events)
    assert [e["done"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4]
    assert [e["file"] for e in events if e["type"] == "skipped"] == ["empty.jpg"]
    assert events[-1]["written"] == 6 and events[-1]["skipped"] == 1

    refused = tiwiz("preprocess", str(src), str(src), "--jsonl")
    assert refused.returncode == 2
    assert json.loads(refused.stdout.splitlines()[-1])["type"] == "error"
