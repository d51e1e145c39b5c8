"""Server-side SVG charts for the admin dashboard: bars, lines and intervals.

Pure functions returning markup: no JavaScript, nothing from another site. Each
chart scales with its container (viewBox, width 100%), is an image with a title
and a description for screen readers, has its legend in HTML (it wraps on a
phone) and its numbers in a table under "Show the data". Colours and shapes go
in attributes, never `style=`, so the Content-Security-Policy holds. Every label
is escaped.
"""

import math
from collections.abc import Callable, Sequence
from itertools import count

from markupsafe import Markup, escape

# The drawing's own units; the browser scales them to the container's width.
WIDTH = 360
# Colour-blind-safe (Okabe-Ito), dark enough on white for lines and text.
PALETTE = ("#0f6b5c", "#d55e00", "#0072b2", "#9a6a00", "#cc79a7", "#56595f")
# A second cue besides colour: each series gets its own dash pattern.
DASHES = ("", "6 3", "2 3", "8 3 2 3", "4 4", "1 2")
LEFT, RIGHT, TOP = 52, 12, 10
AXIS_FONT = 12
LABEL_FONT = 13
# Horizontal charts: the label column and the height of each row.
LABEL_COLUMN = 128
ROW = 26
LABEL_CHARACTERS = 20
_ids = count(1)

Format = Callable[[float], str]


def number(value: float) -> str:
    """ "1,234" or "0.35": whole numbers with separators, others to 2 places."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}"


def percent(value: float) -> str:
    return f"{value:.1%}"


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is >= value."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10 * power


def ticks(top: float, parts: int | None = None) -> list[float]:
    """Evenly spaced values from 0 to `top` (a nice_ceiling) that are round too:
    quarters of 2, 20, ...; fifths of 1, 2.5, 5, 10, ..."""
    if parts is None:
        mantissa = top / 10 ** math.floor(math.log10(top))
        parts = 4 if round(mantissa, 6) == 2 else 5
    return [top * i / parts for i in range(parts + 1)]


def shorten(label: str, limit: int = LABEL_CHARACTERS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _svg(chart_id: str, title: str, description: str, height: int, body: str):
    return (
        f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {height}" width="100%" '
        f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" '
        f'font-family="system-ui, sans-serif" font-size="{AXIS_FONT}">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<desc id="{chart_id}-desc">{escape(description)}</desc>{body}</svg>'
    )


def _legend(names: Sequence[str]) -> str:
    if len(names) < 2:
        return ""
    items = "".join(
        f'<li><svg width="24" height="10" viewBox="0 0 24 10" aria-hidden="true">'
        f'<line x1="1" y1="5" x2="23" y2="5" stroke="{PALETTE[i % len(PALETTE)]}" '
        f'stroke-width="3" stroke-dasharray="{DASHES[i % len(DASHES)]}"/></svg>'
        f"{escape(name)}</li>"
        for i, name in enumerate(names)
    )
    return f'<ul class="chart-legend">{items}</ul>'


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in header)
    body = "".join(
        "<tr>"
        + f'<th scope="row">{escape(row[0])}</th>'
        + "".join(f"<td>{escape(cell)}</td>" for cell in row[1:])
        + "</tr>"
        for row in rows
    )
    return (
        '<details class="chart-data"><summary>Show the data</summary>'
        f'<div class="table-scroll"><table><caption>{escape(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></details>"
    )


def _figure(title: str, svg: str, legend: str, table: str) -> Markup:
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)}</figcaption>'
        f"{svg}{legend}{table}</figure>"
    )


def line_chart(
    title: str,
    x_labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    y_label: str = "",
    x_label: str = "",
    fmt: Format = number,
) -> Markup:
    """Lines over shared x labels (days, weeks): one (name, values) per series."""
    chart_id = f"chart{next(_ids)}"
    height, bottom = 220, 44
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - bottom
    peak = max((v for _, values in series for v in values if v is not None), default=0)
    top = nice_ceiling(peak)
    n = len(x_labels)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [_y_axis(top, fmt, plot_w, y)]
    step = max(1, math.ceil(n / 5))
    for i in range(0, n, step):
        # The last label ends at the plot's edge, so it is never cut off.
        anchor = "end" if n > 1 and i == n - 1 else "middle"
        parts.append(
            f'<text x="{x(i):.1f}" y="{TOP + plot_h + 15}" text-anchor="{anchor}" '
            f'fill="#5b6575">{escape(x_labels[i])}</text>'
        )
    for i, (name, values) in enumerate(series):
        colour, dash = PALETTE[i % len(PALETTE)], DASHES[i % len(DASHES)]
        points = [(x(j), y(v)) for j, v in enumerate(values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" '
                f'stroke-width="2" stroke-dasharray="{dash}"/>'
            )
        if len(points) <= 31:  # dots would crowd a 90-day line
            parts += [
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(name)}: {escape(fmt(v))}</title></circle>"
                for (px, py), v in zip(
                    points, [v for v in values if v is not None], strict=True
                )
            ]
    parts.append(_axis_titles(x_label, y_label, height, plot_h))
    description = f"Line chart of {', '.join(name for name, _ in series)}" + (
        f" by {x_label.lower()}" if x_label else ""
    )
    rows = [
        [label, *("–" if s[1][j] is None else fmt(s[1][j]) for s in series)]
        for j, label in enumerate(x_labels)
    ]
    return _figure(
        title,
        _svg(chart_id, title, description, height, "".join(parts)),
        _legend([name for name, _ in series]),
        _table(title, [x_label or "", *(name for name, _ in series)], rows),
    )


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float]],
    *,
    x_label: str = "",
    fmt: Format = number,
) -> Markup:
    """Horizontal bars, one (label, value) each: long labels stay readable."""
    chart_id = f"chart{next(_ids)}"
    bottom = 36
    height = TOP + ROW * len(bars) + bottom
    plot_w = WIDTH - LABEL_COLUMN - RIGHT - 36  # room for the value at the end
    top = nice_ceiling(max((v for _, v in bars), default=0))
    parts = []
    for i, (label, value) in enumerate(bars):
        row_y = TOP + ROW * i
        width = plot_w * value / top if top else 0
        parts.append(
            f'<text x="{LABEL_COLUMN - 6}" y="{row_y + ROW / 2 + 4:.1f}" '
            f'text-anchor="end" font-size="{LABEL_FONT}" fill="#1d2430">'
            f"{escape(shorten(label))}<title>{escape(label)}</title></text>"
            f'<rect x="{LABEL_COLUMN}" y="{row_y + 4}" width="{width:.1f}" '
            f'height="{ROW - 8}" fill="{PALETTE[0]}" rx="2">'
            f"<title>{escape(label)}: {escape(fmt(value))}</title></rect>"
            f'<text x="{LABEL_COLUMN + width + 4:.1f}" y="{row_y + ROW / 2 + 4:.1f}" '
            f'fill="#1d2430">{escape(fmt(value))}</text>'
        )
    axis_y = TOP + ROW * len(bars)
    parts.append(
        f'<line x1="{LABEL_COLUMN}" y1="{axis_y}" x2="{LABEL_COLUMN + plot_w}" '
        f'y2="{axis_y}" stroke="#767f8c"/>'
    )
    for tick in ticks(top, 2):
        tick_x = LABEL_COLUMN + plot_w * tick / top
        parts.append(
            f'<text x="{tick_x:.1f}" y="{axis_y + 14}" text-anchor="middle" '
            f'fill="#5b6575">{escape(fmt(tick))}</text>'
        )
    if x_label:
        parts.append(
            f'<text x="{LABEL_COLUMN + plot_w / 2:.1f}" y="{height - 4}" '
            f'text-anchor="middle" fill="#5b6575">{escape(x_label)}</text>'
        )
    description = f"Bar chart: {x_label or 'value'} for " + ", ".join(
        label for label, _ in bars
    )
    return _figure(
        title,
        _svg(chart_id, title, description, height, "".join(parts)),
        "",
        _table(title, ["", x_label or "value"], [[b, fmt(v)] for b, v in bars]),
    )


def interval_chart(
    title: str,
    rows: Sequence[tuple[str, float | None, float | None, float | None]],
    *,
    x_label: str = "",
    fmt: Format = number,
) -> Markup:
    """A dot per (label, value, low, high) with its interval as a whisker."""
    chart_id = f"chart{next(_ids)}"
    bottom = 36
    height = TOP + ROW * len(rows) + bottom
    plot_w = WIDTH - LABEL_COLUMN - RIGHT - 8
    peak = max((v for _, *values in rows for v in values if v is not None), default=0)
    top = nice_ceiling(peak)

    def px(v: float) -> float:
        return LABEL_COLUMN + plot_w * v / top

    parts = []
    for i, (label, value, low, high) in enumerate(rows):
        mid = TOP + ROW * i + ROW / 2
        colour = PALETTE[i % len(PALETTE)]
        parts.append(
            f'<text x="{LABEL_COLUMN - 6}" y="{mid + 4:.1f}" text-anchor="end" '
            f'font-size="{LABEL_FONT}" fill="#1d2430">{escape(shorten(label))}'
            f"<title>{escape(label)}</title></text>"
        )
        if value is None:
            parts.append(
                f'<text x="{LABEL_COLUMN}" y="{mid + 4:.1f}" fill="#5b6575">'
                "no data</text>"
            )
            continue
        if low is not None and high is not None:
            parts.append(
                f'<line x1="{px(low):.1f}" y1="{mid}" x2="{px(high):.1f}" y2="{mid}" '
                f'stroke="{colour}" stroke-width="2"/>'
                + "".join(
                    f'<line x1="{px(end):.1f}" y1="{mid - 6}" x2="{px(end):.1f}" '
                    f'y2="{mid + 6}" stroke="{colour}" stroke-width="2"/>'
                    for end in (low, high)
                )
            )
        parts.append(
            f'<circle cx="{px(value):.1f}" cy="{mid}" r="5" fill="{colour}">'
            f"<title>{escape(label)}: {escape(interval_text(value, low, high, fmt))}"
            "</title></circle>"
        )
    axis_y = TOP + ROW * len(rows)
    parts.append(
        f'<line x1="{LABEL_COLUMN}" y1="{axis_y}" x2="{LABEL_COLUMN + plot_w}" '
        f'y2="{axis_y}" stroke="#767f8c"/>'
    )
    for tick in ticks(top, 2):
        parts.append(
            f'<text x="{px(tick):.1f}" y="{axis_y + 14}" text-anchor="middle" '
            f'fill="#5b6575">{escape(fmt(tick))}</text>'
        )
    if x_label:
        parts.append(
            f'<text x="{LABEL_COLUMN + plot_w / 2:.1f}" y="{height - 4}" '
            f'text-anchor="middle" fill="#5b6575">{escape(x_label)}</text>'
        )
    description = f"{x_label or 'Values'} with 95% intervals for " + ", ".join(
        label for label, *_ in rows
    )
    return _figure(
        title,
        _svg(chart_id, title, description, height, "".join(parts)),
        "",
        _table(
            title,
            ["", x_label or "value", "95% interval"],
            [
                [
                    label,
                    "–" if value is None else fmt(value),
                    "–" if low is None else f"{fmt(low)} to {fmt(high)}",
                ]
                for label, value, low, high in rows
            ],
        ),
    )


def interval_text(
    value: float | None, low: float | None, high: float | None, fmt: Format = number
) -> str:
    """ "12.0% (9.1% to 15.2%)", or "–" without data."""
    if value is None:
        return "–"
    if low is None or high is None:
        return fmt(value)
    return f"{fmt(value)} ({fmt(low)} to {fmt(high)})"


def _y_axis(top: float, fmt: Format, plot_w: float, y) -> str:
    parts = []
    for tick in ticks(top):
        parts.append(
            f'<line x1="{LEFT}" y1="{y(tick):.1f}" x2="{LEFT + plot_w}" '
            f'y2="{y(tick):.1f}" stroke="#e3e6eb"/>'
            f'<text x="{LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end" '
            f'fill="#5b6575">{escape(fmt(tick))}</text>'
        )
    return "".join(parts)


def _axis_titles(x_label: str, y_label: str, height: int, plot_h: float) -> str:
    parts = []
    if x_label:
        parts.append(
            f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2:.1f}" y="{height - 6}" '
            f'text-anchor="middle" fill="#5b6575">{escape(x_label)}</text>'
        )
    if y_label:
        mid = TOP + plot_h / 2
        parts.append(
            f'<text x="10" y="{mid:.1f}" text-anchor="middle" fill="#5b6575" '
            f'transform="rotate(-90 10 {mid:.1f})">{escape(y_label)}</text>'
        )
    return "".join(parts)
