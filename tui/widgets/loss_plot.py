"""A braille loss plot: raw loss (dim), its moving average (bright) and the validation loss (dots), redrawn only when
the monitor hands it new data."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

_BITS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))  # [row][col] of a 2x4 braille cell

RAW_STYLE = "grey50"
SMOOTH_STYLE = "bold bright_cyan"
VAL_STYLE = "bold yellow"


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.001:
        return f"{v:.1e}"
    return f"{v:.4f}"[:6]


class BrailleCanvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.bits = [[0] * width for _ in range(height)]
        self.styles: list[list[tuple[int, str] | None]] = [[None] * width for _ in range(height)]

    def dot(self, px: int, py: int, style: str, rank: int) -> None:
        cx, cy = px // 2, py // 4
        if not (0 <= cx < self.width and 0 <= cy < self.height):
            return
        self.bits[cy][cx] |= _BITS[py % 4][px % 2]
        current = self.styles[cy][cx]
        if current is None or rank >= current[0]:
            self.styles[cy][cx] = (rank, style)

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str, rank: int) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, style, rank)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def rows(self) -> list[Text]:
        out = []
        for bits_row, style_row in zip(self.bits, self.styles):
            text = Text()
            for bits, style in zip(bits_row, style_row):
                text.append(chr(0x2800 + bits) if bits else " ", style[1] if style else None)
            out.append(text)
        return out


def render_plot(raw, smoothed, val, width: int, height: int) -> Text:
    """The whole plot (legend, y labels, braille area, x labels) as Rich text of at most `width`x`height`."""
    width, height = max(width, 20), max(height, 4)
    legend = Text()
    legend.append("━ smoothed", SMOOTH_STYLE)
    if smoothed:
        legend.append(f" {_fmt(smoothed[-1][1])}", SMOOTH_STYLE)
    legend.append("  · loss", RAW_STYLE)
    if raw:
        legend.append(f" {_fmt(raw[-1][1])}", RAW_STYLE)
    legend.append("  • val", VAL_STYLE)
    if val:
        legend.append(f" {_fmt(val[-1][1])}", VAL_STYLE)
    legend.truncate(width)
    if not raw and not val:
        return Text.assemble(legend, "\n\n", Text("waiting for the first step…", style="dim"))
    label_w = 7
    plot_w, plot_h = width - label_w - 1, height - 2
    points = list(raw) + list(val) + list(smoothed)
    steps = [p[0] for p in points]
    values = [p[1] for p in points]
    x_lo, x_hi = min(steps), max(steps)
    y_lo, y_hi = min(values), max(values)
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5 * abs(y_lo or 1), y_hi + 0.5 * abs(y_hi or 1)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    canvas = BrailleCanvas(plot_w, plot_h)
    px_max, py_max = plot_w * 2 - 1, plot_h * 4 - 1

    def to_px(step: float, value: float) -> tuple[int, int]:
        x = round((step - x_lo) / (x_hi - x_lo) * px_max)
        y = round((1 - (value - y_lo) / (y_hi - y_lo)) * py_max)
        return x, y

    for series, style, rank, connect in ((raw, RAW_STYLE, 0, False), (smoothed, SMOOTH_STYLE, 1, True),
                                         (val, VAL_STYLE, 2, True)):
        prev = None
        for step, value in series:
            x, y = to_px(step, value)
            if connect and prev is not None:
                canvas.line(prev[0], prev[1], x, y, style, rank)
            else:
                canvas.dot(x, y, style, rank)
            prev = (x, y)
    rows = canvas.rows()
    out = Text()
    out.append_text(legend)
    for i, row in enumerate(rows):
        out.append("\n")
        if i == 0:
            label = _fmt(y_hi)
        elif i == len(rows) - 1:
            label = _fmt(y_lo)
        else:
            label = ""
        out.append(label.rjust(label_w) + "┤", "dim")
        out.append_text(row)
    out.append("\n")
    lo, hi = f"{x_lo}", f"step {x_hi}"
    axis = " " * (label_w + 1) + lo + " " * max(plot_w - len(lo) - len(hi), 1) + hi
    out.append(axis[:width], "dim")
    return out


class LossPlot(Widget):
    """Loss curve; call `update_series` with new data (cheap to call; it only refreshes)."""

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 6; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.raw: list[tuple[int, float]] = []
        self.smoothed: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []

    def update_series(self, raw, smoothed, val) -> None:
        self.raw, self.smoothed, self.val = list(raw), list(smoothed), list(val)
        self.refresh()

    def render(self) -> Text:
        size = self.content_size
        return render_plot(self.raw, self.smoothed, self.val, size.width, size.height)
