"""Small inline-SVG plots for the HTML report: histogram and scatter, no plotting library.

Every function returns one `<svg>` element as a string, meant to be placed inside an HTML
page (no XML declaration, no namespace needed there). Non-finite values (NaN, inf), and
values <= 0 on a log axis, are left out and counted in the subtitle; an empty input gives a
framed "no data" plot. All text is HTML-escaped.
"""

from __future__ import annotations

import math
from html import escape
from typing import Iterable, Sequence

import numpy as np

WIDTH, HEIGHT = 440, 280
MARGIN = dict(left=58, right=14, top=40, bottom=44)
COLOR = "#3b6ea8"
AXIS = "#444"
GRID = "#e3e3e3"


def _esc(x) -> str:
    return escape(str(x), quote=True)


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step - 1e-9) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick positions (log10 values) for a log axis spanning 10**lo to 10**hi: powers of ten when the
    range covers two or more of them, else 1, 2, 5 x 10^k, else round values of the linear range."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    eps = 1e-9
    decades = [float(e) for e in range(math.ceil(lo - eps), math.floor(hi + eps) + 1)]
    if len(decades) >= 2:
        step = max(1, math.ceil(len(decades) / 7))
        return decades[::step]
    ticks = [math.log10(m) + e for e in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if lo - eps <= t <= hi + eps]
    if len(ticks) >= 2:
        return ticks
    return [math.log10(t) for t in nice_ticks(10**lo, 10**hi) if t > 0]


def clean(values: Iterable, log: bool = False) -> tuple[np.ndarray, int]:
    """(finite values, number left out); on a log axis values <= 0 are left out too."""
    try:
        a = np.asarray(list(values), dtype=float).ravel()
    except (TypeError, ValueError):
        a = np.asarray([_to_float(v) for v in values], dtype=float)
    keep = np.isfinite(a)
    if log:
        keep &= a > 0
    return a[keep], int(a.size - keep.sum())


def _to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _span(lo: float, hi: float) -> tuple[float, float]:
    if hi > lo:
        return lo, hi
    pad = abs(lo) * 0.05 or 0.5
    return lo - pad, hi + pad


class _Frame:
    """Maps data to pixels inside the plot area and draws axes."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float], width: int, height: int):
        self.x0, self.x1 = x
        self.y0, self.y1 = y
        self.w, self.h = width, height
        self.left, self.right = MARGIN["left"], width - MARGIN["right"]
        self.top, self.bottom = MARGIN["top"], height - MARGIN["bottom"]

    def px(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def py(self, v: float) -> float:
        return self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def axes(self, xlabel: str, ylabel: str, x_log: bool = False, y_log: bool = False) -> list[str]:
        out = []
        for t in (log_ticks if y_log else nice_ticks)(self.y0, self.y1):
            y = self.py(t)
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.right}" y2="{y:.1f}" stroke="{GRID}"/>')
            out.append(f'<text x="{self.left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="{AXIS}">'
                       f"{_esc(_fmt(10 ** t if y_log else t))}</text>")
        for t in (log_ticks if x_log else nice_ticks)(self.x0, self.x1):
            x = self.px(t)
            out.append(f'<line x1="{x:.1f}" y1="{self.bottom}" x2="{x:.1f}" y2="{self.bottom + 4}" stroke="{AXIS}"/>')
            out.append(f'<text x="{x:.1f}" y="{self.bottom + 16}" text-anchor="middle" font-size="11" fill="{AXIS}">'
                       f"{_esc(_fmt(10 ** t if x_log else t))}</text>")
        out.append(f'<line x1="{self.left}" y1="{self.bottom}" x2="{self.right}" y2="{self.bottom}" stroke="{AXIS}"/>')
        out.append(f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.bottom}" stroke="{AXIS}"/>')
        out.append(f'<text x="{(self.left + self.right) / 2:.1f}" y="{self.h - 8}" text-anchor="middle" font-size="12" '
                   f'fill="{AXIS}">{_esc(xlabel)}{" (log scale)" if x_log else ""}</text>')
        cy = (self.top + self.bottom) / 2
        out.append(f'<text x="14" y="{cy:.1f}" text-anchor="middle" font-size="12" fill="{AXIS}" '
                   f'transform="rotate(-90 14 {cy:.1f})">{_esc(ylabel)}{" (log scale)" if y_log else ""}</text>')
        return out


def _svg(title: str, subtitle: str, body: list[str], width: int, height: int) -> str:
    head = (f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{_esc(title)}"><title>{_esc(title)}</title>'
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff" stroke="#ccc"/>'
            f'<text x="{width / 2:.1f}" y="18" text-anchor="middle" font-size="14" font-weight="bold" fill="#222">'
            f"{_esc(title)}</text>"
            f'<text x="{width / 2:.1f}" y="33" text-anchor="middle" font-size="11" fill="#666">{_esc(subtitle)}</text>')
    return head + "".join(body) + "</svg>"


def _subtitle(n: int, dropped: int, log: bool) -> str:
    s = f"n = {n}"
    if dropped:
        s += f" ({dropped} {'not finite or <= 0' if log else 'not finite'}, not shown)"
    return s


def _no_data(title: str, dropped: int, width: int, height: int, log: bool) -> str:
    body = [f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" font-size="13" fill="#888">no data</text>']
    return _svg(title, _subtitle(0, dropped, log), body, width, height)


def histogram(values: Iterable, *, title: str, xlabel: str, bins: int = 20, log_x: bool = False,
              width: int = WIDTH, height: int = HEIGHT, color: str = COLOR) -> str:
    """Counts of `values` in `bins` equal-width bins (in log10 space with `log_x`)."""
    v, dropped = clean(values, log=log_x)
    if v.size == 0:
        return _no_data(title, dropped, width, height, log_x)
    if log_x:
        v = np.log10(v)
    lo, hi = _span(float(v.min()), float(v.max()))
    counts, edges = np.histogram(v, bins=max(1, int(bins)), range=(lo, hi))
    frame = _Frame((lo, hi), (0.0, float(max(counts.max(), 1)) * 1.08), width, height)
    body = frame.axes(xlabel, "images", x_log=log_x)
    for c, a, b in zip(counts, edges[:-1], edges[1:]):
        if c == 0:
            continue
        x, x2, y = frame.px(a), frame.px(b), frame.py(c)
        label = f"{_fmt(10 ** a if log_x else a)} to {_fmt(10 ** b if log_x else b)}: {int(c)}"
        body.append(f'<rect x="{x + 0.5:.1f}" y="{y:.1f}" width="{max(x2 - x - 1, 0.5):.1f}" '
                    f'height="{frame.bottom - y:.1f}" fill="{color}"><title>{_esc(label)}</title></rect>')
    return _svg(title, _subtitle(int(v.size), dropped, log_x), body, width, height)


def scatter(x: Iterable, y: Iterable, *, title: str, xlabel: str, ylabel: str, labels: Sequence | None = None,
            log_y: bool = False, width: int = WIDTH, height: int = HEIGHT, color: str = COLOR) -> str:
    """Points (x, y); pairs where either is not finite (or y <= 0 with `log_y`) are left out.
    `labels` (e.g. ids) become hover titles."""
    xs = np.asarray([_to_float(a) for a in x], dtype=float)
    ys = np.asarray([_to_float(b) for b in y], dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length: {xs.size} vs {ys.size}")
    keep = np.isfinite(xs) & np.isfinite(ys)
    if log_y:
        keep &= ys > 0
    dropped = int(xs.size - keep.sum())
    if not keep.any():
        return _no_data(title, dropped, width, height, log_y)
    labels = list(labels) if labels is not None else [None] * xs.size
    px_, py_ = xs[keep], ys[keep]
    if log_y:
        py_ = np.log10(py_)
    lab = [name for name, k in zip(labels, keep) if k]
    xr = _span(float(px_.min()), float(px_.max()))
    yr = _span(float(py_.min()), float(py_.max()))
    pad_x, pad_y = (xr[1] - xr[0]) * 0.04, (yr[1] - yr[0]) * 0.06
    frame = _Frame((xr[0] - pad_x, xr[1] + pad_x), (yr[0] - pad_y, yr[1] + pad_y), width, height)
    body = frame.axes(xlabel, ylabel, y_log=log_y)
    for a, b, name in zip(px_, py_, lab):
        tip = f"{name}: " if name is not None else ""
        tip += f"{_fmt(a)}, {_fmt(10 ** b if log_y else b)}"
        body.append(f'<circle cx="{frame.px(a):.1f}" cy="{frame.py(b):.1f}" r="3.5" fill="{color}" fill-opacity="0.65">'
                    f"<title>{_esc(tip)}</title></circle>")
    return _svg(title, _subtitle(int(keep.sum()), dropped, log_y), body, width, height)
