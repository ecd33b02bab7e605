"""A braille loss plot: raw loss (dim), its moving average (bright) and the validation loss (yellow), redrawn only when
the monitor hands it new data (its `points` reactive).

Drawing cost does not grow with the run: every series is cut into one bucket per pixel column (2 per character), and
the raw loss is drawn as the min..max span of each bucket, so a single spike among 100k steps still shows. The series
are kept in growing float arrays (appending only the new points), and the bucketing and rasterising are numpy."""

from __future__ import annotations

from array import array

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

RAW_STYLE = "grey50"
SMOOTH_STYLE = "bold bright_cyan"
VAL_STYLE = "bold yellow"

# weight of the braille dot at (row 0..3, column 0..1) of a cell
_DOT_WEIGHTS = np.array([[0x01, 0x08], [0x02, 0x10], [0x04, 0x20], [0x40, 0x80]], dtype=np.uint16)


WAITING = "waiting for the first step…"


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100 or abs(v) < 0.001:
        return f"{v:.1e}"
    return f"{v:.4f}"[:6]


class Series:
    """(step, value) points in two growing arrays. `sync(points)` appends what is new in a list that only grows, and
    rebuilds when the list was cut (a resume truncates it)."""

    def __init__(self) -> None:
        self.steps = array("d")
        self.values = array("d")
        self._range: tuple[float, float] | None = None  # (min, max) of the values, kept up to date by sync

    def __len__(self) -> int:
        return len(self.steps)

    def sync(self, points) -> None:
        n = len(self.steps)
        if isinstance(points, Series):
            self.steps, self.values = points.steps, points.values
            return
        if n > len(points) or (n and (points[n - 1][0] != self.steps[-1] or points[n - 1][1] != self.values[-1])):
            self.steps, self.values, n = array("d"), array("d"), 0
            self._range = None
        new = points[n:] if n else points
        if new:
            values = [p[1] for p in new]
            if n and self._range is None:
                pass  # a NaN came before: the plot computes the range itself
            elif any(v != v for v in values):  # NaN: the plot drops such points and computes the range
                self._range = None
            else:
                lo, hi = min(values), max(values)
                self._range = (lo, hi) if self._range is None else (min(lo, self._range[0]), max(hi, self._range[1]))
        try:
            self.steps.extend(p[0] for p in new)
            self.values.extend(p[1] for p in new)
        except BufferError:  # a numpy view of the old buffer is still alive somewhere: grow a copy instead
            self.steps, self.values = array("d", self.steps), array("d", self.values)
            self.steps.extend(p[0] for p in new)
            self.values.extend(p[1] for p in new)

    def value_range(self, values: np.ndarray) -> tuple[float, float]:
        if self._range is not None and len(values) == len(self.values):
            return self._range
        return float(values.min()), float(values.max())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.frombuffer(self.steps, dtype=np.float64) if len(self.steps) else np.zeros(0),
                np.frombuffer(self.values, dtype=np.float64) if len(self.values) else np.zeros(0))

    @property
    def last(self) -> float | None:
        return self.values[-1] if len(self.values) else None


def _as_series(points) -> Series:
    if isinstance(points, Series):
        return points
    series = Series()
    series.sync(list(points))
    return series


def _column_starts(steps: np.ndarray, x_lo: float, x_hi: float, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """For steps sorted ascending: the pixel columns that hold points and the index of each one's first point.
    O(columns x log points): the points themselves are never visited."""
    edges = x_lo + (np.arange(1, n_cols) - 0.5) / max(n_cols - 1, 1) * (x_hi - x_lo)
    bounds = np.searchsorted(steps, edges, side="left")
    starts_all = np.concatenate(([0], bounds))
    ends_all = np.concatenate((bounds, [len(steps)]))
    cols = np.flatnonzero(ends_all > starts_all)
    return cols, starts_all[cols]


def _buckets(steps: np.ndarray, values: np.ndarray, x_lo: float, x_hi: float, n_cols: int, spans: bool):
    """Per pixel column that holds points: (column, min, max, last value, point count); min/max only when `spans`."""
    if not len(steps):
        empty = np.zeros(0, dtype=np.int64)
        return empty, np.zeros(0), np.zeros(0), np.zeros(0), empty
    cols, starts = _column_starts(steps, x_lo, x_hi, n_cols)
    ends = np.concatenate((starts[1:], [len(values)])) - 1
    lasts, counts = values[ends], ends - starts + 1
    if not spans:
        return cols, lasts, lasts, lasts, counts
    return cols, np.minimum.reduceat(values, starts), np.maximum.reduceat(values, starts), lasts, counts


def _spans(diff: np.ndarray, cols: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> None:
    """Mark y0[i]..y1[i] in each column in a difference array [rows + 1, cols]; its cumulative sum down the rows is
    the pixel mask (see `_mask`)."""
    if not len(cols):
        return
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    np.add.at(diff, (lo, cols), 1)
    np.add.at(diff, (hi + 1, cols), -1)


def _mask(diff: np.ndarray) -> np.ndarray:
    return np.cumsum(diff, axis=0, dtype=np.int32)[:-1] > 0


def _cells(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel mask [height*4, width*2] -> braille bits per cell [height, width]."""
    m = mask.reshape(height, 4, width, 2).astype(np.uint16)
    return np.einsum("hrwc,rc->hw", m, _DOT_WEIGHTS)


Row = list  # of (text, style or None) runs


def render_plot(raw, smoothed, val, width: int, height: int, empty: str = WAITING) -> Text:
    """The whole plot (legend, y labels, braille area, x labels) as Rich text of at most `width`x`height`. The series
    are (step, value) lists or `Series`."""
    out = Text()
    for i, row in enumerate(plot_rows(raw, smoothed, val, width, height, empty)):
        if i:
            out.append("\n")
        for text, style in row:
            out.append(text, style)
    return out


def _cut(row: Row, width: int) -> Row:
    out, used = [], 0
    for text, style in row:
        if used + len(text) > width:
            text = text[: width - used]
        if text:
            out.append((text, style))
            used += len(text)
    return out


def plot_rows(raw, smoothed, val, width: int, height: int, empty: str = WAITING) -> list[Row]:
    """The plot as rows of styled runs: the legend, the braille area with y labels, the x axis."""
    raw, smoothed, val = _as_series(raw), _as_series(smoothed), _as_series(val)
    width, height = max(width, 20), max(height, 4)
    legend = _legend(raw, smoothed, val, width)
    waiting = [legend, [], [(empty, "dim")]]
    if not len(raw) and not len(val):
        return waiting
    label_w = 7
    plot_w, plot_h = width - label_w - 1, height - 2
    arrays, ranges = _finite_arrays((raw, smoothed, val))
    present = [a for a in arrays if len(a[0])]
    if not present:
        return waiting
    x_lo = min(float(a[0][0]) for a in present)
    x_hi = max(float(a[0][-1]) for a in present)
    y_lo = min(r[0] for r in ranges)
    y_hi = max(r[1] for r in ranges)
    if y_hi - y_lo < 1e-12:
        y_lo, y_hi = y_lo - 0.5 * abs(y_lo or 1), y_hi + 0.5 * abs(y_hi or 1)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    bits = _series_cells(arrays, (x_lo, x_hi), (y_lo, y_hi), plot_w, plot_h)
    rows: list[Row] = [legend, *_braille_rows(bits, plot_w, plot_h, label_w, y_lo, y_hi)]
    lo, hi = f"{x_lo:g}", f"step {x_hi:g}"
    axis = " " * (label_w + 1) + lo + " " * max(plot_w - len(lo) - len(hi), 1) + hi
    rows.append([(axis[:width], "dim")])
    return rows


def _legend(raw, smoothed, val, width: int) -> Row:
    """"━ smoothed 0.1562  · loss 0.1793  • val 0.1703"; where that does not fit (a 60-column terminal), the short
    form "━ smooth .156 · loss .179 • val .170", so no series loses its name or its value."""
    entries = (("━ smoothed", "━ smooth", smoothed, SMOOTH_STYLE), ("  · loss", " · loss", raw, RAW_STYLE),
               ("  • val", " • val", val, VAL_STYLE))
    full: Row = []
    for label, _, series, style in entries:
        full.append((label, style))
        if series.last is not None:
            full.append((f" {_fmt(series.last)}", style))
    if sum(len(text) for text, _ in full) <= width:
        return full
    short: Row = []
    for _, label, series, style in entries:
        value = "" if series.last is None else f" {series.last:.3f}".replace(" 0.", " .")
        short.append((label + value, style))
    return _cut(short, width)


def _finite_arrays(series_list) -> tuple[list, list]:
    """Each series' (steps, values) arrays without NaN/inf points, and the value ranges of those that have any."""
    arrays, ranges = [], []
    for series in series_list:
        steps, values = series.arrays()
        if len(values):
            lo, hi = series.value_range(values)
            if not np.isfinite(lo + hi):  # rare: drop NaN/inf points
                keep = np.isfinite(values)
                steps, values = steps[keep], values[keep]
                lo, hi = (float(values.min()), float(values.max())) if len(values) else (lo, hi)
            if len(values):
                ranges.append((lo, hi))
        arrays.append((steps, values))
    return arrays, ranges


def _series_cells(arrays, x_range, y_range, plot_w: int, plot_h: int) -> list:
    """Each series' braille dots per cell (raw, smoothed, val)."""
    (x_lo, x_hi), (y_lo, y_hi) = x_range, y_range
    px_w, px_h = plot_w * 2, plot_h * 4

    def to_py(values: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((1 - (values - y_lo) / (y_hi - y_lo)) * (px_h - 1)), 0, px_h - 1).astype(np.int64)

    masks = []
    for rank, (steps, values) in enumerate(arrays):
        diff = np.zeros((px_h + 1, px_w), dtype=np.int32)
        cols, lows, highs, lasts, counts = _buckets(steps, values, x_lo, x_hi, px_w, spans=rank == 0)
        if rank == 0:  # raw: each column's min..max span where it holds many points, its 1-2 points as dots
            dense = counts > 2
            _spans(diff, cols[dense], to_py(highs[dense]), to_py(lows[dense]))
            sparse = ~dense
            for ys in (to_py(lows[sparse]), to_py(highs[sparse])):
                _spans(diff, cols[sparse], ys, ys)
        elif len(cols):  # smoothed and val: a line through each column's last value
            ys = to_py(lasts)
            _spans(diff, cols, ys, ys)
            if len(cols) > 1:
                _connect(diff, cols, ys)
        masks.append(_mask(diff))
    return [_cells(m, plot_h, plot_w) for m in masks]


def _braille_rows(bits: list, plot_w: int, plot_h: int, label_w: int, y_lo: float, y_hi: float) -> list[Row]:
    total = bits[0] | bits[1] | bits[2]
    # the style of a cell: the highest-ranked series with a dot in it; a blank cell takes its left neighbour's, so
    # a row needs one span per change of series, not one per gap
    kind = np.where(bits[2] > 0, 2, np.where(bits[1] > 0, 1, 0))
    idx = np.where(total > 0, np.arange(plot_w)[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    kind = np.take_along_axis(kind, idx, axis=1)
    codes = np.where(total > 0, total.astype(np.uint32) + 0x2800, 0x20).astype("<u4")
    styles = (RAW_STYLE, SMOOTH_STYLE, VAL_STYLE)
    rows: list[Row] = []
    for i in range(plot_h):
        label = _fmt(y_hi) if i == 0 else (_fmt(y_lo) if i == plot_h - 1 else "")
        row: Row = [(label.rjust(label_w) + "┤", "dim")]
        row_kind = kind[i]
        changes = np.flatnonzero(row_kind[1:] != row_kind[:-1]) + 1
        bounds = [0, *changes.tolist(), plot_w]
        line = codes[i].tobytes().decode("utf-32-le")
        kinds = row_kind[bounds[:-1]].tolist()
        row.extend((line[a:b], styles[k]) for a, b, k in zip(bounds[:-1], bounds[1:], kinds))
        rows.append(row)
    return rows


def _connect(diff: np.ndarray, cols: np.ndarray, ys: np.ndarray) -> None:
    """Join successive points: a column's span reaches halfway to the next point, the next column's the rest; gaps
    between far-apart columns (sparse validation points) are filled by interpolation."""
    gaps = np.diff(cols)
    if np.all(gaps <= 1):
        mid = (ys[:-1] + ys[1:]) // 2
        _spans(diff, cols[:-1], ys[:-1], mid)
        _spans(diff, cols[1:], mid, ys[1:])
        return
    full = np.arange(cols[0], cols[-1] + 1)
    yi = np.rint(np.interp(full, cols, ys)).astype(np.int64)
    mid = (yi[:-1] + yi[1:]) // 2
    _spans(diff, full[:-1], yi[:-1], mid)
    _spans(diff, full[1:], mid, yi[1:])


class LossPlot(Widget):
    """Loss curve. Assign `points` = (raw, smoothed, val): lists of (step, value) only append their new points to
    the plot's arrays (cheap), `Series` filled elsewhere are taken as they are. Drawn through the line API from cached
    strips, rebuilt once per data change or resize (the width is what the series are bucketed to)."""

    DEFAULT_CSS = """
    LossPlot { height: 1fr; min-height: 6; }
    """

    # the same lists grow in place: every assignment is new data (always_update), validate_points folds it in
    points: reactive[tuple[Series, Series, Series]] = reactive(lambda: (Series(), Series(), Series()),
                                                               always_update=True)
    empty_text: reactive[str] = reactive(WAITING)  # shown while there is no point to draw

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._version = 0  # bumped by every change of the data
        self._strips: list[Strip] = []
        self._strips_key: tuple | None = None

    def validate_points(self, points: tuple) -> tuple[Series, Series, Series]:
        self._version += 1
        if all(isinstance(p, Series) for p in points):  # filled in the monitor's worker thread: adopted
            return tuple(points)
        raw, smoothed, val = self.points
        for series, new in zip((raw, smoothed, val), points):
            series.sync(new)
        return raw, smoothed, val

    @property
    def raw(self) -> Series:
        return self.points[0]

    @property
    def smoothed(self) -> Series:
        return self.points[1]

    @property
    def val(self) -> Series:
        return self.points[2]

    def _build(self, width: int, height: int) -> list[Strip]:
        key = (self._version, self.empty_text, width, height)
        if key != self._strips_key:
            rows = plot_rows(*self.points, width, height, self.empty_text)
            strips = []
            for row in rows[:height]:
                segments = [Segment(text, _style(style)) for text, style in row]
                used = sum(len(text) for text, _ in row)  # every character here is one cell wide
                if used < width:
                    segments.append(Segment(" " * (width - used)))
                strips.append(Strip(segments, max(width, used)).crop(0, width))
            self._strips = strips
            self._strips_key = key
        return self._strips

    def render_line(self, y: int) -> Strip:
        width, height = self.size
        strips = self._build(width, height)
        return strips[y] if y < len(strips) else Strip.blank(width)


_STYLES: dict[str | None, Style] = {}


def _style(name: str | None) -> Style:
    style = _STYLES.get(name)
    if style is None:
        style = _STYLES[name] = Style.parse(name) if name else Style()
    return style
