"""The results files of an evaluation: ``report.json``, ``report.md`` (protocol header + one row per method) and
``pareto.png`` (FID vs latency).

Existing reports are never overwritten unless asked (``--overwrite``): the next free suffix is used instead
(``report-2.json``, ``report-2.md``, ``pareto-2.png``, ...), chosen so that all three files share it. Numbering
rather than refusing because a report comes at the end of a long run; failing then would lose the numbers.

Headline latency is the end-to-end median at the largest measured batch size (64 by default: the batch of the
published CoDe / VARiant timings); "speedup" is full's latency over the method's at that batch size, measured in
the same run. Per-batch-size numbers are in the JSON and in a second table. Every row also says how its method
meets the run's compute budget (`SamplingMethod.budget_match`): "FLOPs / budget" in the headline table, the budget's
FLOPs and the method's note in a third.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Published numbers (docs/REFERENCES.md#published-numbers) printed next to ours, by sampling protocol. Quality
# only: their latencies come from other GPUs and batch sizes, so they are not comparable with ours.
PUBLISHED: dict[str, list[tuple[str, str]]] = {
    "official": [
        ("full", "VAR-d30 paper: FID 1.92, IS 323.1; README / arXiv v1: FID 1.97, IS 334.7"),
    ],
    "code": [
        ("full", "VAR-d30, CoDe protocol: FID 1.95, IS 301 (3.62 s / batch 64 on an L20)"),
        ("variant@16", "VARiant-d16 (N=6): FID 2.05, IS 314, 1.7x"),
        ("variant@8", "VARiant-d8: FID 2.12 (arXiv v1) / 2.15 (CVPR digest), 2.6x"),
        ("variant@2", "VARiant-d2: FID 2.97 (arXiv v1) / 2.67 (CVPR digest), 3.5x"),
        ("code", "CoDe N=8: FID 1.98, IS 302, 1.7x; N=6: FID 2.27, IS 297, 2.9x"),
    ],
}


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    markdown: Path
    plot: Path


def report_paths(out_dir: Path, overwrite: bool) -> ReportPaths:
    """`report.*` when free (or when overwriting), else the first `report-<n>.*` none of whose files exist."""
    def paths(suffix: str) -> ReportPaths:
        return ReportPaths(out_dir / f"report{suffix}.json", out_dir / f"report{suffix}.md",
                           out_dir / f"pareto{suffix}.png")

    candidate, n = paths(""), 1
    while not overwrite and any(p.exists() for p in (candidate.json, candidate.markdown, candidate.plot)):
        n += 1
        candidate = paths(f"-{n}")
    return candidate


def _fmt(value: Any, spec: str = ".3f", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def _bytes(value: int | float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(value)


def headline_cost(row: dict[str, Any]) -> dict[str, Any] | None:
    """The cost entry at the largest batch size of a method row, or None."""
    costs = row.get("cost") or []
    return max(costs, key=lambda c: c["batch_size"]) if costs else None


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Fill `speedup` (end-to-end), `speedup_model` and `flops_speedup` of every cost entry from the `full` row."""
    full = next((r for r in rows if r["method"] == "full"), None)
    full_cost = {c["batch_size"]: c for c in (full or {}).get("cost") or []}
    full_flops = (full or {}).get("flops_per_image")
    for row in rows:
        for c in row.get("cost") or []:
            ref = full_cost.get(c["batch_size"])
            c["speedup"] = ref["e2e_s"] / c["e2e_s"] if ref and c["e2e_s"] > 0 else None
            c["speedup_model"] = ref["model_s"] / c["model_s"] if ref and c["model_s"] > 0 else None
        flops = row.get("flops_per_image")
        row["flops_speedup"] = full_flops / flops if full_flops and flops else None


def _protocol_lines(protocol: dict[str, Any]) -> list[str]:
    lines = ["## Protocol", ""]
    for key, value in protocol.items():
        lines.append(f"- **{key}**: `{json.dumps(value) if not isinstance(value, str) else value}`")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: protocol header, headline table, per-batch table, published anchors."""
    rows = report["methods"]
    lines = [f"# Evaluation report: {report.get('title', 'varianttrain')}", ""]
    lines += _protocol_lines(report["protocol"]) + [""]
    lines += ["## Results", "",
              "Latency: end-to-end median (VQVAE decode included) at the largest measured batch size; model-only "
              "excludes decode. Speedup: full's latency / the method's, same run, same batch size. FLOPs: what "
              "the sampler executed for the plan actually used (matmul FLOPs, 2 per MAC, CFG included). FLOPs / "
              "budget: the method's closed-form FLOPs over those of the budget's VARiant subnet.", "",
              "| method | plan | FID ↓ | IS ↑ | samples | batch | latency e2e (s) | latency model (s) | speedup | "
              "img/s | peak mem | KV cache | GFLOPs/img | FLOPs speedup | FLOPs / budget |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        c = headline_cost(row) or {}
        is_txt = _fmt(row.get("inception_score_mean"), ".1f")
        if row.get("inception_score_std") is not None:
            is_txt += f" ± {row['inception_score_std']:.1f}"
        gflops = row.get("flops_per_image")
        lines.append(" | ".join([
            f"| {row['method']}" + ("" if row.get("status", "ok") == "ok" else f" ({row['status']})"),
            row.get("plan", "–"), _fmt(row.get("fid"), ".3f"), is_txt, _fmt(row.get("num_samples"), "d"),
            _fmt(c.get("batch_size"), "d"), _fmt(c.get("e2e_s"), ".4f"), _fmt(c.get("model_s"), ".4f"),
            _fmt(c.get("speedup"), ".2f") + ("x" if c.get("speedup") else ""), _fmt(c.get("images_per_s"), ".2f"),
            _bytes(c.get("peak_memory_bytes")), _bytes(c.get("kv_cache_bytes")),
            _fmt(gflops / 1e9 if gflops else None, ".4g"), _fmt(row.get("flops_speedup"), ".2f"),
            _fmt(row.get("flop_ratio"), ".4f") + " |"]))
    if any(r.get("precision") is not None for r in rows):
        lines += ["", "| method | precision | recall |", "|---|---|---|"]
        lines += [f"| {r['method']} | {_fmt(r.get('precision'))} | {_fmt(r.get('recall'))} |" for r in rows]
    per_batch = [(r["method"], c) for r in rows for c in r.get("cost") or []]
    if per_batch:
        lines += ["", "### Latency per batch size", "",
                  "| method | batch | e2e median (s) | e2e mean (s) | model median (s) | speedup e2e | speedup model | "
                  "img/s | peak mem | memory measured as |", "|---|---|---|---|---|---|---|---|---|---|"]
        for name, c in per_batch:
            lines.append(f"| {name} | {c['batch_size']} | {c['e2e_s']:.4f} | {c['e2e_s_mean']:.4f} | "
                         f"{c['model_s']:.4f} | {_fmt(c.get('speedup'), '.2f')} | {_fmt(c.get('speedup_model'), '.2f')}"
                         f" | {c['images_per_s']:.2f} | {_bytes(c['peak_memory_bytes'])} | {c['peak_memory_kind']} |")
    budgeted = [r for r in rows if r.get("budget_note") is not None]
    if budgeted:
        lines += ["", "### How each method meets the budget", "",
                  "| method | budget GFLOPs/img | closed-form GFLOPs/img | FLOPs / budget | how |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['method']} | {_fmt(r['budget_flops_per_image'] / 1e9, '.4g')} | "
                  f"{_fmt(r['flops_closed_form_per_image'] / 1e9, '.4g')} | {_fmt(r['flop_ratio'], '.4f')} | "
                  f"{r['budget_note']} |" for r in budgeted]
    published = report.get("published") or []
    if published:
        lines += ["", "## Published numbers (docs/REFERENCES.md; other hardware: compare quality, not latency)", ""]
        lines += [f"- {text}" for text in published]
    return "\n".join(lines) + "\n"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (lower is better in both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(report: dict[str, Any], path: Path) -> Path:
    """FID vs end-to-end latency, one labelled point per method, Pareto front dashed (GFLOPs when no FID)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display; headless servers
    import matplotlib.pyplot as plt

    rows = [r for r in report["methods"] if headline_cost(r)]
    use_fid = any(r.get("fid") is not None for r in rows)
    ykey = "fid" if use_fid else "flops_per_image"
    pts, names = [], []
    for r in rows:
        y = r.get(ykey)
        if y is None:
            continue
        pts.append((headline_cost(r)["e2e_s"], y / (1 if use_fid else 1e9)))
        names.append(r["method"])
    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    if pts:
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=40, zorder=3)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        dx, dy = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
        placed: list[tuple[float, float, float]] = []  # (left, bottom, width) of labels, in axis fractions
        for (x, y), name in zip(pts, names, strict=True):
            # Greedy: lift a label by one line until it overlaps no label placed before (clusters of methods
            # with the same cost are common: the budget is shared).
            u, v, width, lift = (x - min(xs)) / dx, (y - min(ys)) / dy, 0.016 * len(name), 0
            while any(abs(u - pu) < max(width, pw) and abs(v + 0.05 * lift - pv) < 0.045 for pu, pv, pw in placed):
                lift += 1
            placed.append((u, v + 0.05 * lift, width))
            leader = {"arrowstyle": "-", "color": "gray", "lw": 0.5} if lift else None
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5 + 11 * lift), fontsize=9,
                        arrowprops=leader)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="gray", zorder=2,
                label="Pareto front")
        ax.legend(loc="best")
    else:
        ax.text(0.5, 0.5, "no method has both a latency and a quality number", ha="center", transform=ax.transAxes)
    batch = max((headline_cost(r)["batch_size"] for r in rows), default=None)
    ax.set_xlabel(f"end-to-end latency per batch of {batch} (s)" if batch else "latency (s)")
    ax.set_ylabel("FID (lower is better)" if use_fid else "GFLOPs / image (FID not computed)")
    ax.set_title(textwrap.fill(report.get("title", "varianttrain evaluation"), 80), fontsize=9)
    ax.margins(0.15)  # room for the labels of the extreme points
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], out_dir: Path, overwrite: bool = False) -> ReportPaths:
    """Add speedups, then write the JSON, the Markdown table and the Pareto plot (never clobbering by default)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    add_speedups(report["methods"])
    paths = report_paths(out_dir, overwrite)
    _write_text_atomic(paths.json, json.dumps(report, indent=2, default=str) + "\n")
    _write_text_atomic(paths.markdown, render_markdown(report))
    plot_pareto(report, paths.plot)
    return paths
