"""The PNG plots of runs and comparisons, drawn with Pillow: an accuracy-matrix heatmap and line plots.

Why not matplotlib: every run writes two plots, and with matplotlib (figure, text layout, Agg rendering, and the
import of pyplot in a fresh process) they were a third of a short run's wall time (docs/scaling.md, "Speed").
These plots need axes, ticks, a colour scale, lines with markers, bands and a legend, nothing else, and Pillow
draws them in a few milliseconds. Lines are drawn at twice the size and scaled down, which smooths their edges.

The colours are matplotlib's: ``viridis`` for the heatmap (interpolated between 33 of its entries, within 3 of
255 of matplotlib's) and the ``tab10`` cycle for lines, so the plots look as they did.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

# viridis at 0, 1/32, ..., 1 (matplotlib.colormaps["viridis"])
_VIRIDIS = ("440154,470d60,48186a,482374,472d7b,453781,424086,3e4989,3b528b,375b8d,33638d,2f6b8e,2c728e,297a8e,"
            "26828e,23898e,21918c,1f988b,1fa088,22a785,28ae80,32b67a,3fbc73,4ec36b,5ec962,70cf57,84d44b,98d83e,"
            "addc30,c2df23,d8e219,ece51b,fde725")
TAB10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
_INK, _GRID, _WHITE = (0, 0, 0), (224, 224, 224), (255, 255, 255)


def viridis(value: float) -> tuple[int, int, int]:
    """The viridis colour of ``value`` in [0, 1] (clipped; NaN is drawn as the lowest colour)."""
    v = 0.0 if not math.isfinite(value) else min(max(value, 0.0), 1.0)
    return tuple(int(c) for c in _viridis_table()[round(v * 255)])  # type: ignore[return-value]


@lru_cache(maxsize=1)
def _viridis_table() -> np.ndarray:
    """256 viridis colours (uint8 RGB), interpolated linearly between the 33 anchors."""
    anchors = np.asarray([[int(h[k:k + 2], 16) for k in (0, 2, 4)] for h in _VIRIDIS.split(",")], dtype=float)
    at = np.linspace(0, 1, len(anchors))
    grid = np.linspace(0, 1, 256)
    return np.stack([np.interp(grid, at, anchors[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow's embedded scalable font (needs FreeType)
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()


def _text(draw: Any, xy: tuple[float, float], text: str, size: int, fill: Any = _INK, anchor: str = "la") -> None:
    """Draw ``text`` with its box placed by ``anchor`` (l/m/r, then t/m/b), whatever the font supports."""
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left, bottom - top
    x, y = xy
    x -= {"l": 0, "m": w / 2, "r": w}[anchor[0]] + left
    y -= {"t": 0, "a": 0, "m": h / 2, "b": h}[anchor[1]] + top
    draw.text((round(x), round(y)), text, font=font, fill=fill)


def _text_width(text: str, size: int) -> int:
    left, _, right, _ = _font(size).getbbox(text)
    return int(right - left)


def _vertical_text(image: Any, centre: tuple[float, float], text: str, size: int) -> None:
    """``text`` turned a quarter left (an axis label on the left), centred on ``centre``."""
    from PIL import Image, ImageDraw

    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    label = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, font=font, fill=255)
    label = label.rotate(90, expand=True)
    x, y = round(centre[0] - label.width / 2), round(centre[1] - label.height / 2)
    image.paste(Image.new("RGB", label.size, _INK), (x, y), label)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # the fastest; these images are small either way
    return buffer.getvalue()


def heatmap_png(matrix: Sequence[Sequence[float]], title: str, *, xlabel: str = "test experience j",
                ylabel: str = "after training step i") -> bytes:
    """The accuracy matrix as a heatmap (viridis, 0 to 1) with each value written in its cell when it fits."""
    from PIL import Image, ImageDraw

    m = np.asarray(matrix, dtype=float)
    rows, cols = m.shape
    cell = int(min(44, max(8, 440 // max(rows, cols))))
    grid_w, grid_h = cell * cols, cell * rows
    left, top, bottom, bar_gap, bar_w, bar_labels = 62, 30, 46, 12, 14, 34
    width = max(left + grid_w + bar_gap + bar_w + bar_labels, _text_width(title, 12) + 20)
    height = top + grid_h + bottom
    image = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(image)
    for i in range(rows):
        for j in range(cols):
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=viridis(float(m[i, j])))
            if cell >= 30:
                value = m[i, j]
                shown = f"{100 * value:.1f}" if math.isfinite(value) else "nan"  # in %, as every table
                _text(draw, (x0 + cell / 2, y0 + cell / 2), shown, 11, _WHITE if not value >= 0.6 else _INK, "mm")
    draw.rectangle((left - 1, top - 1, left + grid_w, top + grid_h), outline=_INK)
    step = max(1, math.ceil(max(rows, cols) / 12))
    for j in range(0, cols, step):
        x = left + j * cell + cell / 2
        draw.line((x, top + grid_h, x, top + grid_h + 3), fill=_INK)
        _text(draw, (x, top + grid_h + 5), str(j), 10, anchor="mt")
    for i in range(0, rows, step):
        y = top + i * cell + cell / 2
        draw.line((left - 4, y, left - 1, y), fill=_INK)
        _text(draw, (left - 6, y), str(i), 10, anchor="rm")
    _text(draw, (left + grid_w / 2, height - 8), xlabel, 11, anchor="mb")
    _vertical_text(image, (14, top + grid_h / 2), ylabel, 11)
    _text(draw, (width / 2, 8), title, 12, anchor="mt")
    # the colour scale: 0 at the bottom, 1 at the top
    bx = left + grid_w + bar_gap
    bar = _viridis_table()[::-1, None, :].repeat(bar_w, 1)
    image.paste(Image.fromarray(bar, "RGB").resize((bar_w, grid_h), Image.BILINEAR), (bx, top))
    draw.rectangle((bx - 1, top - 1, bx + bar_w, top + grid_h), outline=_INK)
    for tick, label in zip((0.0, 0.2, 0.4, 0.6, 0.8, 1.0), percent_ticks()):
        y = top + (1 - tick) * (grid_h - 1)
        draw.line((bx + bar_w, y, bx + bar_w + 3, y), fill=_INK)
        _text(draw, (bx + bar_w + 5, y), label, 10, anchor="lm")
    return _png(image)


MARKERS = ("circle", "square", "triangle", "diamond", "down")


def percent_ticks() -> list[str]:
    """The labels of a 0-to-1 accuracy axis, in % as every table prints accuracies."""
    return [f"{100 * k / 5:.0f}" for k in range(6)]


def step_ticks(n: int) -> list[int]:
    """The training steps labelled on the x axis of ``n`` steps: counted from 0, as the tables and the accuracy
    matrix count them (at most about ten labels)."""
    return list(range(0, n, max(1, math.ceil(n / 10))))


def series_style(k: int) -> tuple[str, str]:
    """The colour and marker of the ``k``-th line: the tab10 cycle, and a marker shape that changes along it, so
    that lines 10 apart (the same colour) still differ and many lines stay told apart in grey print too."""
    return TAB10[k % len(TAB10)], MARKERS[(k + k // len(TAB10)) % len(MARKERS)]


def legend_label(item: dict[str, Any], final: bool) -> str:
    """A line's legend text; with ``final``, its last value in % (read a crowded plot from its legend)."""
    values = item["values"]
    if final and values and math.isfinite(values[-1]):
        return f"{item['label']} {100 * values[-1]:.1f}"
    return str(item["label"])


def _marker(draw: Any, x: float, y: float, r: float, shape: str, colour: Any) -> None:
    if shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - 1.2 * r), (x - 1.1 * r, y + 0.8 * r), (x + 1.1 * r, y + 0.8 * r)], fill=colour)
    elif shape == "down":
        draw.polygon([(x, y + 1.2 * r), (x - 1.1 * r, y - 0.8 * r), (x + 1.1 * r, y - 0.8 * r)], fill=colour)
    elif shape == "diamond":
        draw.polygon([(x, y - 1.3 * r), (x + 1.3 * r, y), (x, y + 1.3 * r), (x - 1.3 * r, y)], fill=colour)
    else:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def line_plot_png(series: Sequence[dict[str, Any]], *, xlabel: str, ylabel: str, title: str | None = None,
                  size: tuple[int, int] = (500, 320), legend_columns: int = 1, final_in_legend: bool = False) -> bytes:
    """Lines with markers over steps 0..n-1 on a 0-to-100 % axis (values are fractions), each with an optional band.

    ``series``: dicts with ``label``, ``values`` and optionally ``band`` (the half-width drawn around the values,
    e.g. a standard deviation) and ``colour`` (default the tab10 cycle; the marker shape follows ``series_style``).
    ``final_in_legend`` writes each line's last value beside its label.
    """
    from PIL import Image, ImageDraw

    s = 2  # drawn at twice the size, then scaled down: smooth lines and markers
    width, height = size
    left, right, top, bottom = 62, 14, 30 if title else 14, 44
    W, H = width * s, height * s
    image = Image.new("RGB", (W, H), _WHITE)
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = left * s, W - right * s, top * s, H - bottom * s
    n = max((len(item["values"]) for item in series), default=1)
    pad = 0.05 * max(n - 1, 1)
    lo, hi = -pad, n - 1 + pad

    def px(step: float, value: float) -> tuple[float, float]:
        v = min(max(value, 0.0), 1.0) if math.isfinite(value) else 0.0
        return x0 + (step - lo) / (hi - lo) * (x1 - x0), y1 - v * (y1 - y0)

    for k, label in enumerate(percent_ticks()):  # grid and y ticks at 0, 20, ..., 100 %
        value = k / 5
        _, y = px(lo, value)
        draw.line((x0, y, x1, y), fill=_GRID, width=s)
        draw.line((x0 - 4 * s, y, x0, y), fill=_INK, width=s)
        _text(draw, (x0 - 6 * s, y), label, 10 * s, anchor="rm")
    for step in step_ticks(n):
        x, _ = px(step, 0)
        draw.line((x, y0, x, y1), fill=_GRID, width=s)
        draw.line((x, y1, x, y1 + 4 * s), fill=_INK, width=s)
        _text(draw, (x, y1 + 6 * s), str(step), 10 * s, anchor="mt")
    for k, item in enumerate(series):
        band = item.get("band")
        if band is not None and len(item["values"]) > 1:
            overlay = Image.new("RGBA", (W, H), (0, 0, 0, 0))
            colour = _rgb(item.get("colour") or series_style(k)[0])
            upper = [px(i, v + b) for i, (v, b) in enumerate(zip(item["values"], band))]
            lower = [px(i, v - b) for i, (v, b) in enumerate(zip(item["values"], band))]
            ImageDraw.Draw(overlay).polygon(upper + lower[::-1], fill=(*colour, 38))
            image.paste(overlay, (0, 0), overlay)
    for k, item in enumerate(series):
        default, shape = series_style(k)
        colour = _rgb(item.get("colour") or default)
        points = [px(i, v) for i, v in enumerate(item["values"])]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3 * s, joint="curve")
        for x, y in points:
            _marker(draw, x, y, 3 * s, shape, colour)
    draw.rectangle((x0, y0, x1, y1), outline=_INK, width=s)
    _text(draw, ((x0 + x1) / 2, H - 8 * s), xlabel, 11 * s, anchor="mb")
    _vertical_text(image, (14 * s, (y0 + y1) / 2), ylabel, 11 * s)
    if title:
        _text(draw, (W / 2, 8 * s), title, 12 * s, anchor="mt")
    labelled = [{**item, "label": legend_label(item, final_in_legend)} for item in series]
    _legend(draw, labelled, (x0, y0, x1, y1), [px(i, v) for item in series for i, v in enumerate(item["values"])],
            legend_columns, s)
    return _png(image.reduce(s))  # the mean of each 2x2 block


def _legend(draw: Any, series: Sequence[dict[str, Any]], axes: tuple[float, float, float, float],
            points: list[tuple[float, float]], columns: int, s: int) -> None:
    """A framed box of line samples and labels (filled column by column) in the corner of the axes that covers
    the fewest data points, as matplotlib's ``loc="best"`` does."""
    if not series:
        return
    columns = max(1, min(columns, len(series)))
    rows = math.ceil(len(series) / columns)
    size, row_h, sample, margin = 10 * s, 15 * s, 18 * s, 6 * s
    col_w = max(_text_width(str(item["label"]), size) for item in series) + sample + 12 * s
    box_w, box_h = columns * col_w + 6 * s, rows * row_h + 6 * s
    x0, y0, x1, y1 = axes
    corners = [(x1 - margin - box_w, y0 + margin), (x1 - margin - box_w, y1 - margin - box_h),
               (x0 + margin, y0 + margin), (x0 + margin, y1 - margin - box_h)]  # upper right first, as matplotlib

    def covered(corner: tuple[float, float]) -> int:
        bx, by = corner
        return sum(bx - 4 * s <= x <= bx + box_w + 4 * s and by - 4 * s <= y <= by + box_h + 4 * s for x, y in points)

    bx, by = min(corners, key=covered)
    draw.rectangle((bx, by, bx + box_w, by + box_h), fill=_WHITE, outline=(204, 204, 204), width=s)
    for k, item in enumerate(series):
        c, r = divmod(k, rows)
        x, y = bx + 6 * s + c * col_w, by + 3 * s + r * row_h + row_h / 2
        default, shape = series_style(k)
        colour = _rgb(item.get("colour") or default)
        draw.line((x, y, x + sample, y), fill=colour, width=3 * s)
        _marker(draw, x + sample / 2, y, 3 * s, shape, colour)
        _text(draw, (x + sample + 5 * s, y), str(item["label"]), size, anchor="lm")
