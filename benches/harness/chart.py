"""Draw req/s and p99 per scenario and server as grouped bars, with matplotlib or as plain SVG."""

import math
from pathlib import Path
from xml.sax.saxutils import escape

COLOURS = {
    "fastserve": "#d9480f",
    "uvicorn": "#1c7ed6",
    "granian": "#37b24d",
    "ceiling": "#868e96",
}
FALLBACK_COLOUR = "#7048e8"

PANEL_WIDTH = 520
PANEL_HEIGHT = 300
MARGIN_LEFT = 70
MARGIN_TOP = 40
MARGIN_BOTTOM = 70


# Each series maps server -> scenario label -> value; a missing value draws no bar.
Series = dict[str, dict[str, float]]


def draw(path: Path, scenarios: list[str], rps: Series, p99: Series, title: str) -> Path:
    """Write the chart to `path` (PNG with matplotlib, else SVG) and return the path written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        svg_path = path.with_suffix(".svg")
        svg_path.write_text(_svg(scenarios, rps, p99, title))
        return svg_path

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, series, label in ((axes[0], rps, "req/s"), (axes[1], p99, "p99 latency, ms")):
        _bars_matplotlib(axis, scenarios, series, label)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _bars_matplotlib(axis: object, scenarios: list[str], series: Series, label: str) -> None:
    """Draw one grouped bar panel on a matplotlib axis."""
    servers = list(series)
    width = 0.8 / max(1, len(servers))
    for index, server in enumerate(servers):
        xs = [i + index * width for i in range(len(scenarios))]
        ys = [series[server].get(s, 0.0) for s in scenarios]
        axis.bar(xs, ys, width, label=server, color=COLOURS.get(server, FALLBACK_COLOUR))
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(scenarios))], scenarios)
    axis.set_ylabel(label)
    axis.legend()


def _svg(scenarios: list[str], rps: Series, p99: Series, title: str) -> str:
    """Return an SVG document with two bar panels side by side."""
    width = 2 * PANEL_WIDTH + 40
    height = PANEL_HEIGHT + 60
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">{escape(title)}</text>',
    ]
    parts += _svg_panel(0, scenarios, rps, "req/s")
    parts += _svg_panel(PANEL_WIDTH + 40, scenarios, p99, "p99 latency, ms")
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _svg_panel(x0: float, scenarios: list[str], series: Series, label: str) -> list[str]:
    """Return the SVG elements of one panel: axes, ticks, bars with values, legend."""
    servers = list(series)
    plot_w = PANEL_WIDTH - MARGIN_LEFT - 10
    plot_h = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM + 40
    top = MARGIN_TOP
    bottom = top + plot_h
    left = x0 + MARGIN_LEFT
    peak = max((v for values in series.values() for v in values.values()), default=1.0) or 1.0
    step = _nice_step(peak / 4)
    top_value = step * math.ceil(peak / step)
    scale = plot_h / top_value

    parts = [f'<text x="{left + plot_w / 2}" y="{top - 8}" text-anchor="middle">{label}</text>']
    for index in range(round(top_value / step) + 1):
        value = index * step
        y = bottom - value * scale
        grid = f'x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"'
        parts.append(f'<line {grid} stroke="#dee2e6"/>')
        tick = f'x="{left - 6}" y="{y + 4:.1f}" text-anchor="end"'
        parts.append(f"<text {tick}>{_short(value)}</text>")

    group_w = plot_w / max(1, len(scenarios))
    bar_w = group_w * 0.8 / max(1, len(servers))
    for group, scenario in enumerate(scenarios):
        gx = left + group * group_w + group_w * 0.1
        for index, server in enumerate(servers):
            value = series[server].get(scenario)
            if value is None:
                continue
            bx = gx + index * bar_w
            bh = value * scale
            colour = COLOURS.get(server, FALLBACK_COLOUR)
            parts.append(f'<rect x="{bx:.1f}" y="{bottom - bh:.1f}" width="{bar_w - 2:.1f}" '
                         f'height="{bh:.1f}" fill="{colour}"><title>{escape(server)} '
                         f'{escape(scenario)}: {value:,.2f}</title></rect>')  # fmt: skip
        parts.append(f'<text x="{gx + group_w * 0.4:.1f}" y="{bottom + 16}" '
                     f'text-anchor="middle">{escape(scenario)}</text>')  # fmt: skip
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{bottom}" y2="{bottom}" '
                 'stroke="black"/>')  # fmt: skip

    for index, server in enumerate(servers):
        lx = left + index * 110
        ly = bottom + 36
        colour = COLOURS.get(server, FALLBACK_COLOUR)
        parts.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 16}" y="{ly}">{escape(server)}</text>')
    return parts


def _nice_step(raw_step: float) -> float:
    """Round an axis step up to 1, 2, 2.5 or 5 times a power of ten."""
    magnitude = 10 ** math.floor(math.log10(raw_step))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw_step:
            return factor * magnitude
    return 10 * magnitude


def _short(value: float) -> str:
    """Format an axis value compactly: 12k, 3.5, 0.25."""
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    if value >= 10 or value == 0:
        return f"{value:.0f}"
    return f"{value:g}"
