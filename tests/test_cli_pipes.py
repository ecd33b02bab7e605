"""`tiwiz runs | head -1` and friends (issue 25, #37): a reader that goes away ends the command quietly, without a
BrokenPipeError traceback (or Python's "Exception ignored" at exit)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("args", [["runs"], ["queue"], ["models", "--only"], ["runs", "--json"]])
def test_a_closed_pipe_ends_the_command_quietly(tmp_path, args):
    from core.runs import folder as runs

    root = tmp_path / "runs"
    for i in range(30):  # something to print
        runs.write_status(root / f"run-{i:02d}", {"state": "finished", "step": 10, "max_steps": 10})
    (root / "queue").mkdir()
    (root / "queue" / "job.toml").write_text('name = "job"\n')
    if args[0] == "models":
        args = args + [str(tmp_path)]
    read, write = os.pipe()
    os.close(read)  # the reader (`head -1`) is gone before the first line
    try:
        done = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "TIWIZ_RUNS_DIR": str(root)})
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
