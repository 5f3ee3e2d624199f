"""Time vs N: a hand-written SVG (no dependency), and a PNG as well when matplotlib is installed."""

from __future__ import annotations

import importlib.util
import math
from html import escape
from pathlib import Path

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 200, 40, 60


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    e = math.floor(math.log10(lo))
    while 10**e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10**e
            if lo / 1.0001 <= v <= hi * 1.0001:
                ticks.append(v)
        e += 1
    return ticks or [lo, hi]


def svg(series: dict[str, list[tuple[int, float]]], title: str) -> str:
    """Log-log plot of seconds vs N, one polyline per series."""
    points = [(n, s) for pts in series.values() for n, s in pts if s > 0]
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="80">'
            f'<text x="10" y="40">{escape(title)}: no data</text></svg>\n'
        )
    ns = [n for n, _ in points]
    ys = [s * 1000 for _, s in points]
    x_lo: float = min(ns)
    x_hi: float = max(ns)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo / 2, x_hi * 2
    y_lo, y_hi = min(ys) / 1.5, max(ys) * 1.5
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    def x(n: float) -> float:
        return LEFT + pw * (math.log10(n) - math.log10(x_lo)) / (
            math.log10(x_hi) - math.log10(x_lo)
        )

    def y(v_ms: float) -> float:
        frac = (math.log10(v_ms) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        return TOP + ph * (1 - frac)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="15">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>',
    ]
    for v in _log_ticks(y_lo, y_hi):
        yy = y(v)
        label = f"{v:g}"
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ddd"/>'
            f'<text x="{LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end">{label}</text>'
        )
    for n in sorted(set(ns)):
        xx = x(n)
        out.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{TOP}" y2="{TOP + ph}" stroke="#eee"/>'
            f'<text x="{xx:.1f}" y="{TOP + ph + 18}" text-anchor="middle">{n}</text>'
        )
    out.append(
        f'<text x="{LEFT + pw / 2}" y="{H - 15}" text-anchor="middle">N (no-op subagents)</text>'
        f'<text x="18" y="{TOP + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 18 {TOP + ph / 2})">wall time, ms (log)</text>'
    )
    for k, (name, pts) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        good = [(n, s * 1000) for n, s in sorted(pts) if s > 0]
        if good:
            path = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in good)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [
                f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}"/>' for n, v in good
            ]
        ly = TOP + 10 + 22 * k
        out.append(
            f'<line x1="{LEFT + pw + 15}" x2="{LEFT + pw + 40}" y1="{ly}" y2="{ly}" '
            f'stroke="{color}" stroke-width="3"/>'
            f'<text x="{LEFT + pw + 46}" y="{ly + 4}">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(series: dict[str, list[tuple[int, float]]], title: str, path: Path) -> bool:
    """Write a PNG with matplotlib if it is installed (never required)."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for k, (name, pts) in enumerate(series.items()):
        good = sorted((n, s * 1000) for n, s in pts if s > 0)
        if good:
            ax.plot(*zip(*good, strict=True), marker="o", label=name, color=COLORS[k % len(COLORS)])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (no-op subagents)")
    ax.set_ylabel("wall time, ms (log)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(series: dict[str, list[tuple[int, float]]], stem: Path, title: str) -> list[Path]:
    """``stem``.svg always, ``stem``.png when matplotlib is there."""
    written = [stem.with_suffix(".svg")]
    written[0].write_text(svg(series, title))
    if png(series, title, stem.with_suffix(".png")):
        written.append(stem.with_suffix(".png"))
    return written
