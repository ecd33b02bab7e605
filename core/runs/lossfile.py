"""`loss.csv`: one row per optimizer step (step, epoch, loss, val_loss, lr, elapsed_s, holdout_loss, editability),
appended and flushed. `val_loss`, `holdout_loss` (the held-out images' loss, `--holdout`) and `editability` (the
context prompts' similarity with the init text, core.training.editability) are empty except on validation steps.

Each row is a single write of a whole line, so a crash loses at most the unfinished last line; on resume the file is
rewritten (atomically) keeping only rows up to the resumed step, so the history continues without duplicates.

Runs written before `holdout_loss` existed have the 6-column header (OLD_HEADER), those before `editability` the
7-column one (HOLDOUT_HEADER). All are read; resuming such a run rewrites its file with the current header (old rows
get empty new cells), so one file never mixes two shapes.
New columns go at the end, so a reader that counts columns keeps its positions.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.atomic import atomic_write_text

COLUMNS = ("step", "epoch", "loss", "val_loss", "lr", "elapsed_s", "holdout_loss", "editability")
HEADER = ",".join(COLUMNS)
OLD_HEADER = "step,epoch,loss,val_loss,lr,elapsed_s"  # before 2026-11-26 (no holdout_loss)
HOLDOUT_HEADER = OLD_HEADER + ",holdout_loss"  # before issue 24 (no editability)
_HEADERS = {HEADER: COLUMNS, OLD_HEADER: tuple(OLD_HEADER.split(",")),
            HOLDOUT_HEADER: tuple(HOLDOUT_HEADER.split(","))}


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _rows(lines: list[str]):
    """(columns of the header, [cells of each whole row]); a file whose header is neither known one is read as the
    old layout (its first line is skipped either way)."""
    names = _HEADERS.get(lines[0].strip(), _HEADERS[OLD_HEADER]) if lines else COLUMNS
    rows = []
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) == len(names) and cells[0].isdigit():
            rows.append(dict(zip(names, cells)))
    return names, rows


class LossLog:
    def __init__(self, path: str | os.PathLike, *, keep_until_step: int | None = None) -> None:
        """Open for appending. `keep_until_step=None` starts a fresh file; otherwise rows after that step are dropped
        (and an old-layout file is rewritten with the current header)."""
        self.path = Path(path)
        if keep_until_step is None or not self.path.exists():
            atomic_write_text(self.path, HEADER + "\n")
        else:
            _, rows = _rows(self.path.read_text(encoding="utf-8", errors="replace").splitlines())
            kept = [HEADER] + [",".join(row.get(c, "") for c in COLUMNS)
                               for row in rows if int(row["step"]) <= keep_until_step]
            atomic_write_text(self.path, "\n".join(kept) + "\n")
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, epoch: int, loss: float | None, val_loss: float | None, lr: float | None,
              elapsed_s: float, holdout_loss: float | None = None, editability: float | None = None) -> None:
        row = [step, epoch, loss, val_loss, lr, round(elapsed_s, 3), holdout_loss, editability]
        self._fh.write(",".join(_fmt(v) for v in row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_loss_csv(path: str | os.PathLike) -> list[dict]:
    """Rows as dicts with numbers (None for empty cells), every key of COLUMNS in each (the newer columns None in an
    older-layout file); a truncated last line is ignored."""
    _, rows = _rows(Path(path).read_text(encoding="utf-8").splitlines())
    out = []
    for row in rows:
        try:
            out.append({c: (int(row[c]) if c in ("step", "epoch") else float(row[c])) if row.get(c) else None
                        for c in COLUMNS})
        except ValueError:  # a line cut mid-number by a crash
            continue
    return out
