"""The report's figures as inline SVG (no script, no network): the pairwise loss matrix and one scatter per signal."""
from __future__ import annotations

import html
import math
from typing import Mapping, Sequence

from sammerge.planner.compat import GroupResult

__all__ = ["matrix_svg", "scatter_svg"]


def matrix_svg(tasks: Sequence[str], res: Mapping[tuple, GroupResult], tolerance: float) -> str:
    """Pairwise loss (points) of the row task merged with the column task; red above the tolerance."""
    cell, pad = 64, 110
    n = len(tasks)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{pad + n * cell}" height="{pad + n * cell}" '
             f'role="img" aria-label="pairwise loss matrix">']
    for j, t in enumerate(tasks):
        parts.append(f'<text x="{pad + j * cell + cell / 2}" y="{pad - 8}" text-anchor="middle" '
                     f'font-size="11">{html.escape(t)}</text>')
    for i, a in enumerate(tasks):
        parts.append(f'<text x="{pad - 6}" y="{pad + i * cell + cell / 2 + 4}" text-anchor="end" '
                     f'font-size="11">{html.escape(a)}</text>')
        for j, b in enumerate(tasks):
            key = tuple(sorted((a, b), key=tasks.index))
            value = 0.0 if a == b else (res[key].loss_points[a] if key in res else None)
            shade = "#eee" if value is None else ("#d9534f" if value > tolerance else
                                                 f"rgba(66,139,202,{min(1.0, max(0.08, value / max(tolerance, 1e-9)))})")
            label = "—" if value is None else f"{value:+.1f}"
            parts.append(f'<rect x="{pad + j * cell}" y="{pad + i * cell}" width="{cell - 2}" height="{cell - 2}" '
                         f'fill="{shade}"/><text x="{pad + j * cell + cell / 2}" y="{pad + i * cell + cell / 2 + 4}" '
                         f'text-anchor="middle" font-size="12">{label}</text>')
    return "".join(parts) + "</svg>"


def _ticks(lo: float, hi: float) -> list[float]:
    """About five round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 4))
    step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 5)
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def scatter_svg(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], x_label: str, y_label: str,
                title: str) -> str:
    """Points (x, y) labelled with their pair, axes with round ticks; ``title`` above (e.g. ρ and p)."""
    w, h, left, bottom, top, right = 360, 260, 56, 40, 28, 12
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(min(ys), 0.0), max(max(ys), 0.0)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    x0, x1, y0, y1 = x0 - 0.08 * dx, x1 + 0.08 * dx, y0 - 0.08 * dy, y1 + 0.08 * dy

    def px(x):
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y):
        return h - bottom - (y - y0) / (y1 - y0) * (h - bottom - top)

    esc = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
             f'aria-label="{esc(x_label)} against {esc(y_label)}">',
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="12">{esc(title)}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#888"/>']
    for t in _ticks(x0, x1):
        parts.append(f'<text x="{px(t):.1f}" y="{h - bottom + 14}" text-anchor="middle" font-size="10">{t:.3g}</text>')
    for t in _ticks(y0, y1):
        parts.append(f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">{t:.3g}</text>')
    parts.append(f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle" font-size="11">'
                 f'{esc(x_label)}</text>')
    parts.append(f'<text x="12" y="{(top + h - bottom) / 2}" text-anchor="middle" font-size="11" '
                 f'transform="rotate(-90 12 {(top + h - bottom) / 2})">{esc(y_label)}</text>')
    for x, y, lab in zip(xs, ys, labels):
        parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="#428bca"><title>{esc(lab)}: '
                     f'{x:.4g}, {y:.2f}</title></circle>'
                     f'<text x="{px(x) + 6:.1f}" y="{py(y) - 5:.1f}" font-size="9" fill="#555">{esc(lab)}</text>')
    return "".join(parts) + "</svg>"
