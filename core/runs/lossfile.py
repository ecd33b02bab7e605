"""`loss.csv`: one row per optimizer step (step, epoch, loss, val_loss, lr, elapsed_s), appended and flushed.

Each row is a single write of a whole line, so a crash loses at most the unfinished last line; on resume the file is
rewritten (atomically) keeping only rows up to the resumed step, so the history continues without duplicates.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.atomic import atomic_write_text

HEADER = "step,epoch,loss,val_loss,lr,elapsed_s"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class LossLog:
    def __init__(self, path: str | os.PathLike, *, keep_until_step: int | None = None) -> None:
        """Open for appending. `keep_until_step=None` starts a fresh file; otherwise rows after that step are dropped."""
        self.path = Path(path)
        if keep_until_step is None or not self.path.exists():
            atomic_write_text(self.path, HEADER + "\n")
        else:
            kept = [HEADER]
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
                first = line.split(",", 1)[0]
                if line.count(",") == HEADER.count(",") and first.isdigit() and int(first) <= keep_until_step:
                    kept.append(line)
            atomic_write_text(self.path, "\n".join(kept) + "\n")
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, epoch: int, loss: float | None, val_loss: float | None, lr: float | None,
              elapsed_s: float) -> None:
        row = [step, epoch, loss, val_loss, lr, round(elapsed_s, 3)]
        self._fh.write(",".join(_fmt(v) for v in row) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def read_loss_csv(path: str | os.PathLike) -> list[dict]:
    """Rows as dicts with numbers (None for empty cells); a truncated last line is ignored."""
    rows = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for line in lines[1:]:
        cells = line.split(",")
        if len(cells) != 6:
            continue
        step, epoch, loss, val, lr, elapsed = cells
        rows.append({
            "step": int(step), "epoch": int(epoch), "loss": float(loss) if loss else None,
            "val_loss": float(val) if val else None, "lr": float(lr) if lr else None,
            "elapsed_s": float(elapsed) if elapsed else None,
        })
    return rows
