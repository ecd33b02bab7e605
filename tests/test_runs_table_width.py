"""`tiwiz runs` on an 80-column terminal keeps every row on one line (issue 25 item 18: the BEST column wrapped):
long run names are cut in the middle, keeping their time stamp."""

from __future__ import annotations

import time

from core.runs import folder as runs


def test_long_names_are_cut_not_wrapped_at_80_columns(tmp_path, monkeypatch):
    from core.cli.runs import runs_table

    monkeypatch.setenv("COLUMNS", "80")
    for name in ("zxq-portrait-of-grandmother-20261124-101010", "cat-20261124-101011"):
        run = tmp_path / name
        run.mkdir()
        runs.write_status(run, {"pid": None, "state": "finished", "step": 3000, "max_steps": 3000, "last_loss": 0.0123,
                                "last_checkpoint": 3000, "best_step": 2400, "best_basis": "validation",
                                "updated": time.time() - 3600})
    rows = runs_table(runs.list_runs(tmp_path), tty=True)
    assert all(len(line) <= 79 for line in rows), rows
    assert rows[0].split()[-1] == "BEST" and all(line.endswith("2400 (val loss)") for line in rows[1:])
    long = next(line for line in rows if line.startswith("zxq"))
    assert "…" in long.split()[0] and long.split()[0].endswith("101010")
    assert max(len(line) for line in runs_table(runs.list_runs(tmp_path), tty=False)) > 80  # a pipe gets them whole
