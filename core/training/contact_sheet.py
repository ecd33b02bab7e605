"""`previews/sheet.png`: every preview of a run side by side in step order, each labelled with its step, so the step
to keep (A1111 users pick a checkpoint by its preview) can be chosen from one image."""

from __future__ import annotations

import math
import re
from pathlib import Path

SHEET_NAME = "sheet.png"
THUMB = 192  # the longest side of each preview on the sheet
LABEL_H = 18


def preview_files(previews: Path, name: str) -> list[tuple[int, Path]]:
    """(step, path) of `NAME-STEP.png` in `previews`, by step."""
    pattern = re.compile(re.escape(name) + r"-(\d+)\.png$")
    found = []
    for path in previews.glob("*.png"):
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_contact_sheet(previews: str | Path, name: str) -> Path | None:
    """Write `previews/sheet.png` (atomically) from the run's previews; None when there are none."""
    from PIL import Image, ImageDraw

    from core.atomic import atomic_write_with

    previews = Path(previews)
    shots = preview_files(previews, name)
    if not shots:
        return None
    thumbs = []
    for step, path in shots:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            thumbs.append((step, im.copy()))
    cols = math.ceil(math.sqrt(len(thumbs)))
    rows = math.ceil(len(thumbs) / cols)
    cell_w = max(t.width for _, t in thumbs)
    cell_h = max(t.height for _, t in thumbs) + LABEL_H
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for i, (step, thumb) in enumerate(thumbs):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        sheet.paste(thumb, (x + (cell_w - thumb.width) // 2, y))
        draw.text((x + 4, y + cell_h - LABEL_H + 3), f"step {step}", fill=(230, 230, 230))
    out = previews / SHEET_NAME
    atomic_write_with(out, lambda tmp: sheet.save(tmp, format="PNG"))
    return out
