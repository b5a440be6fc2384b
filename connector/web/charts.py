"""Charts as server-rendered SVG: horizontal bars (a funnel, revenue per partner) and columns
(referrals over time). No script and no CDN: the markup is the chart, it prints, it scales on a
phone, and screen readers get its title and every bar's label and value."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape

from markupsafe import Markup

BAR_HEIGHT = 24
GAP = 8
LABEL_WIDTH = 120
WIDTH = 400
COLOURS = ("#1d4f91", "#2e6fba", "#4a8bd0", "#0b6e4f", "#8a2b2b")  # contrast >= 4.5:1 against white text


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


def bars(title: str, items: Sequence[tuple[str, float]], fmt: Callable[[float], str] = _fmt) -> Markup:
    """Horizontal bars, longest = the largest value; each labelled with its name and value."""
    if not items:
        return Markup(f'<p class="empty">{escape(title)}: nothing in this period.</p>')  # noqa: S704 - escaped
    top = max(value for _, value in items) or 1
    height = len(items) * (BAR_HEIGHT + GAP) + GAP
    room = WIDTH - LABEL_WIDTH - 80
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="c-{id(items)}">',
             f'<title id="c-{id(items)}">{escape(title)}</title>']
    for index, (label, value) in enumerate(items):
        y = GAP + index * (BAR_HEIGHT + GAP)
        width = max(1.0, room * (value / top)) if value else 0
        colour = COLOURS[index % len(COLOURS)]
        short = label if len(label) <= 16 else label[:15] + "…"
        parts.append(
            f'<g><title>{escape(label)}: {escape(fmt(value))}</title>'
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 17}" text-anchor="end" class="label">{escape(short)}</text>'
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR_HEIGHT}" fill="{colour}" rx="2"/>'
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + 17}" class="value">{escape(fmt(value))}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above


def columns(title: str, items: Sequence[tuple[str, float]]) -> Markup:
    """Vertical columns over time (a label under each, its value above)."""
    if not items:
        return Markup(f'<p class="empty">{escape(title)}: nothing in this period.</p>')  # noqa: S704 - escaped
    top = max(value for _, value in items) or 1
    step = max(30, min(70, (WIDTH - 20) // max(1, len(items))))
    width = max(WIDTH, step * len(items) + 20)
    chart_height, base = 160, 180
    parts = [f'<svg class="chart" viewBox="0 0 {width} 210" role="img" aria-labelledby="c-{id(items)}">',
             f'<title id="c-{id(items)}">{escape(title)}</title>']
    for index, (label, value) in enumerate(items):
        x = 10 + index * step
        height = chart_height * (value / top)
        parts.append(
            f'<g><title>{escape(label)}: {escape(_fmt(value))}</title>'
            f'<rect x="{x}" y="{base - height:.1f}" width="{step - 6}" height="{height:.1f}" fill="{COLOURS[0]}"/>'
            f'<text x="{x + (step - 6) / 2:.1f}" y="{base - height - 4:.1f}" text-anchor="middle" class="value">'
            f'{escape(_fmt(value))}</text>'
            f'<text x="{x + (step - 6) / 2:.1f}" y="{base + 16}" text-anchor="middle" class="label">'
            f'{escape(label[2:] if len(items) > 12 else label)}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every interpolated text is escaped above
