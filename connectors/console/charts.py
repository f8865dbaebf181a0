"""Inline SVG charts for the dashboard: drawn on the server, no script and nothing from a CDN (works offline).

Every label is escaped; each bar and point carries a <title> with its exact figure (shown on hover).
"""
from __future__ import annotations

from typing import Sequence

from markupsafe import Markup, escape

PALETTE = ("#2563a8", "#1d7a46", "#a66300", "#b42318", "#6b4fbb", "#0f7c86", "#7a5c00", "#444f5a")


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
                  f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}</svg>')


def bar_chart(labels: Sequence[str], values: Sequence[float], *, label: str, width: int = 640, height: int = 180,
              every: int = 1) -> Markup:
    """Vertical bars, one per label (x labels every `every` bars)."""
    left, bottom, top = 34, 22, 10
    n = max(1, len(values))
    peak = max([v for v in values if v is not None] + [1])
    step = (width - left - 6) / n
    body = [f'<line x1="{left}" y1="{height - bottom}" x2="{width - 4}" y2="{height - bottom}" stroke="#b4c0cc"/>',
            f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{_num(peak)}</text>',
            f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>']
    for i, (name, v) in enumerate(zip(labels, values, strict=True)):
        h = 0 if not v else (height - bottom - top) * v / peak
        x = left + i * step + step * 0.15
        y = height - bottom - h
        body.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{step * 0.7:.1f}" height="{h:.1f}" fill="{PALETTE[0]}">'
                    f'<title>{escape(name)}: {_num(v or 0)}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{x + step * 0.35:.1f}" y="{height - 6}" text-anchor="middle">{escape(name)}</text>')
    return _svg(width, height, body, label)


def share_bar(parts: Sequence[tuple[str, float]], *, label: str, width: int = 640, height: int = 64) -> Markup:
    """One horizontal bar split into shares, with a legend underneath."""
    total = sum(v for _, v in parts) or 1
    x, body = 0.0, []
    for i, (name, v) in enumerate(parts):
        w = (width - 2) * v / total
        color = PALETTE[i % len(PALETTE)]
        body.append(f'<rect x="{x + 1:.1f}" y="4" width="{w:.1f}" height="24" fill="{color}">'
                    f'<title>{escape(name)}: {_num(v)} ({100 * v / total:.1f}%)</title></rect>')
        x += w
    lx = 1
    for i, (name, v) in enumerate(parts):
        color = PALETTE[i % len(PALETTE)]
        text = f"{name} {100 * v / total:.0f}% ({_num(v)})"
        body.append(f'<rect x="{lx}" y="40" width="10" height="10" fill="{color}"/>'
                    f'<text x="{lx + 14}" y="49">{escape(text)}</text>')
        lx += 14 + 7 * len(text) + 16
    return _svg(width, height, body, label)


def line_chart(labels: Sequence[str], series: dict[str, Sequence[float | None]], *, label: str, width: int = 640,
               height: int = 200, low: float = 0.0, high: float = 1.0, every: int = 1, percent: bool = True) -> Markup:
    """One line per series over the x labels; None is a gap. The legend names each series."""
    left, bottom, top, right = 40, 22, 10, 150
    n = max(1, len(labels) - 1)
    plot_w, plot_h = width - left - right, height - bottom - top

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / ((high - low) or 1))

    def fmt(v: float) -> str:
        return f"{100 * v:.0f}%" if percent else _num(v)

    body = []
    for tick in (low, (low + high) / 2, high):
        body.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{left + plot_w}" y2="{y(tick):.1f}" stroke="#e3e8ee"/>'
                    f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">{fmt(tick)}</text>')
    for i, name in enumerate(labels):
        if i % every == 0:
            body.append(f'<text x="{left + plot_w * i / n:.1f}" y="{height - 6}" text-anchor="middle">'
                        f'{escape(name)}</text>')
    for k, (name, values) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        points, segment = [], []
        for i, v in enumerate(values):
            if v is None:
                if segment:
                    points.append(segment)
                segment = []
                continue
            segment.append((left + plot_w * i / n, y(v), v, labels[i]))
        if segment:
            points.append(segment)
        for seg in points:
            if len(seg) > 1:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in seg)
                body.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            for px, py, v, at in seg:
                body.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}">'
                            f'<title>{escape(name)} {escape(at)}: {fmt(v)}</title></circle>')
        ly = top + 14 * k + 6
        body.append(f'<rect x="{width - right + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{width - right + 24}" y="{ly + 1}">{escape(name)}</text>')
    return _svg(width, height, body, label)


def _num(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:,.2f}"
