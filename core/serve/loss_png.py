"""The loss curve as a PNG, drawn with Pillow (no plotting library): the per-step loss (beyond one point per pixel
column, as a band of each column's min and max, so 100k steps draw as fast as 1000), the smoothed loss, the
validation loss and the held-out loss."""

from __future__ import annotations

import io
import math

SIZE = (900, 320)
PAD = (60, 14, 14, 30)  # left, top, right, bottom
BG, AXIS, TEXT = (18, 18, 18), (70, 70, 70), (200, 200, 200)
SERIES = (  # key, legend, colour, line width (0: the min/max band)
    ("loss", "loss", (85, 105, 135), 0),
    ("smoothed", "smoothed", (80, 170, 255), 2),
    ("val", "validation", (255, 170, 60), 2),
    ("holdout", "held-out", (120, 220, 120), 2),
)


def _finite(points) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in points if v is not None and math.isfinite(v)]


def _y_range(series: dict[str, list]) -> tuple[float, float]:
    """Low to high over every series, except that the raw loss's top 1 % (spikes) may fall off the top."""
    values = [v for key, pts in series.items() if key != "loss" for _, v in pts]
    raw = sorted(v for _, v in series.get("loss", []))
    if raw:
        values += [raw[0], raw[min(len(raw) - 1, int(len(raw) * 0.99))]]
    lo, hi = min(values), max(values)
    span = hi - lo or abs(hi) * 0.1 or 1.0
    return lo - span * 0.05, hi + span * 0.05


def _band(draw, points, to_xy, colour) -> None:
    columns: dict[int, list[float]] = {}
    for step, value in points:
        x, y = to_xy(step, value)
        low_high = columns.setdefault(x, [y, y])
        low_high[0], low_high[1] = min(low_high[0], y), max(low_high[1], y)
    for x, (top, bottom) in columns.items():
        draw.line([(x, top), (x, bottom)], fill=colour)


def _axes(draw, box, x_range, y_range) -> None:
    left, top, right, bottom = box
    draw.rectangle(box, outline=AXIS)
    for i in range(5):
        y = top + (bottom - top) * i / 4
        value = y_range[1] - (y_range[1] - y_range[0]) * i / 4
        draw.line([(left, y), (right, y)], fill=(34, 34, 34))
        draw.text((4, y - 6), f"{value:.3g}", fill=TEXT)
    for i in range(3):
        step = x_range[0] + (x_range[1] - x_range[0]) * i / 2
        x = left + (right - left) * i / 2
        label = f"step {step:.0f}"
        draw.text((min(x, right - 6 * len(label)), bottom + 8), label, fill=TEXT)


def loss_curve_png(series: dict[str, list[tuple[int, float]]], max_steps: int = 0, size=SIZE) -> bytes:
    """PNG bytes of the curve. `series` maps "loss", "smoothed", "val", "holdout" to (step, value) points."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, BG)
    draw = ImageDraw.Draw(image)
    series = {key: _finite(points) for key, points in series.items() if points}
    series = {key: points for key, points in series.items() if points}
    if not series:
        draw.text((size[0] // 2 - 40, size[1] // 2 - 6), "no loss yet", fill=TEXT)
        return _png(image)
    box = (PAD[0], PAD[1], size[0] - PAD[2], size[1] - PAD[3])
    steps = [s for points in series.values() for s, _ in points]
    x_range = (min(steps), max(max(steps), max_steps, min(steps) + 1))
    y_range = _y_range(series)

    def to_xy(step: int, value: float) -> tuple[int, float]:
        x = box[0] + (box[2] - box[0]) * (step - x_range[0]) / (x_range[1] - x_range[0])
        clipped = min(max(value, y_range[0]), y_range[1])
        y = box[3] - (box[3] - box[1]) * (clipped - y_range[0]) / (y_range[1] - y_range[0])
        return round(x), y

    _axes(draw, box, x_range, y_range)
    legend_x = box[2] - 8
    for key, name, colour, width in reversed(SERIES):
        points = series.get(key)
        if not points:
            continue
        if width == 0 and len(points) > box[2] - box[0]:  # more points than pixel columns
            _band(draw, points, to_xy, colour)
        elif width == 0:
            draw.line([to_xy(s, v) for s, v in points], fill=colour, width=1)
        elif len(points) == 1:
            x, y = to_xy(*points[0])
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        else:
            draw.line([to_xy(s, v) for s, v in points], fill=colour, width=width)
        legend_x -= 8 * len(name) + 22
        draw.rectangle([legend_x, box[1] + 6, legend_x + 10, box[1] + 16], fill=colour)
        draw.text((legend_x + 14, box[1] + 5), name, fill=TEXT)
    return _png(image)


def _png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
