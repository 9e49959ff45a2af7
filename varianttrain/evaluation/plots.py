"""Quality-vs-cost scatter plots shared by a report (`report.pareto.png`) and the summary over runs (`summary`).

Conventions, the same in every plot: one colour and marker per method; the full model is a star and its quality a
dotted reference line; a row that cannot reach its budget is drawn hollow and labelled with its FLOPs ratio (it ran
at more compute than the others it is plotted with); error bars are one bootstrap standard error; the Pareto front
(lower cost and better quality) is dashed and ignores rows over budget.
"""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

MARKERS = {"full": ("*", "C0"), "variant": ("o", "C1"), "depthvar": ("s", "C2"), "stagevar": ("^", "C3"),
           "fastvar": ("v", "C4"), "earlyexit": ("X", "C5"), "code": ("D", "C6")}


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: str
    method: str
    yerr: float | None = None
    over_budget: float | None = None  # FLOPs / budget of a row that cannot reach it, else None
    reference: bool = False  # the full model


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = False) -> list[int]:
    """Indices of the points no other point beats in both coordinates (x lower is better), sorted by x."""
    sign = -1 if higher_is_better else 1
    pts = [(x, sign * y) for x, y in points]
    front = []
    for i, (x, y) in enumerate(pts):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(pts) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _label_lifts(points: list[Point]) -> list[int]:
    """Lines to lift each label by so that no two labels overlap (greedy, in axis fractions): methods at the same
    budget often cluster."""
    if not points:
        return []
    xs, ys = [p.x for p in points], [p.y for p in points]
    dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    placed: list[tuple[float, float, float]] = []
    lifts = []
    for p in points:
        u, v, width, lift = (p.x - min(xs)) / dx, (p.y - min(ys)) / dy, 0.012 * len(p.label), 0
        while any(abs(u - pu) < max(width, pw) and abs(v + 0.045 * lift - pv) < 0.04 for pu, pv, pw in placed):
            lift += 1
        placed.append((u, v + 0.045 * lift, width))
        lifts.append(lift)
    return lifts


def quality_plot(points: list[Point], path: Path, xlabel: str, ylabel: str, title: str,
                 higher_is_better: bool = False, log_x: bool = False) -> Path:
    """Write the scatter plot of `points` to `path` (PNG, atomic rename)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display; headless servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 5.0), dpi=120)
    seen: set[str] = set()
    lifts = _label_lifts(points)
    for p, lift in zip(points, lifts, strict=True):
        marker, colour = MARKERS.get(p.method, ("o", "C7"))
        hollow = p.over_budget is not None
        ax.errorbar([p.x], [p.y], yerr=None if p.yerr is None else [[p.yerr], [p.yerr]], fmt="none",
                    ecolor=colour, elinewidth=1, capsize=3, alpha=0.7, zorder=2)
        ax.scatter([p.x], [p.y], marker=marker, s=140 if p.reference else 55, zorder=3,
                   facecolors="none" if hollow else colour, edgecolors=colour, linewidths=1.5,
                   label=None if p.method in seen else p.method)
        seen.add(p.method)
        text = p.label + (f" (over budget {p.over_budget:.2f}x)" if hollow else "")
        ax.annotate(text, (p.x, p.y), textcoords="offset points", xytext=(5, 5 + 10 * lift), fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5} if lift else None)
        if p.reference:
            ax.axhline(p.y, color=colour, linestyle=":", linewidth=1, zorder=1)
    usable = [i for i, p in enumerate(points) if p.over_budget is None]
    if len(usable) >= 2:
        front = pareto_front([(points[i].x, points[i].y) for i in usable], higher_is_better)
        ax.plot([points[usable[i]].x for i in front], [points[usable[i]].y for i in front], "--", color="gray",
                zorder=1, label="Pareto front (within budget)")
    if any(p.over_budget is not None for p in points):
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="gray", label="over budget (hollow)")
    if any(p.reference for p in points):
        ax.plot([], [], ":", color="C0", label="full model (reference)")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(textwrap.fill(title, 90), fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
