"""The results files of an evaluation: ``report.json``, ``report.md``, ``pareto.png`` and ``grid.png``.

``report.md`` starts with the results: one row per (method, weights) with every quality figure and its bootstrap
standard error, per-image fidelity to the full model, FLOPs against the budget, latency, speedup and memory; then the
embedded Pareto plot and side-by-side grid; then which differences exceed the noise; then the details (latency per
batch size, how each method meets the budget, warnings, provenance, protocol).

Existing reports are never overwritten unless asked (``--overwrite``): the next free suffix is used instead
(``report-2.*``, ``pareto-2.png``, ``grid-2.png``), the same for every file of one report. Numbering rather than
refusing because a report comes at the end of a long run; failing then would lose the numbers.

Headline latency is the end-to-end median at the largest measured batch size (64 by default: the batch of the
published CoDe / VARiant timings); "speedup" is the full model's latency over the row's at that batch size, in the
same run. A row whose closed-form FLOPs exceed the budget by more than ``report.budget_tolerance`` is flagged
("over budget"): it ran at more compute than the budget, and its plot marker is hollow.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varianttrain.evaluation.plots import Point, quality_plot

# Published numbers (docs/REFERENCES.md#published-numbers) printed next to ours, by sampling protocol. Quality
# only: their latencies come from other GPUs and batch sizes, so they are not comparable with ours.
PUBLISHED: dict[str, list[tuple[str, str]]] = {
    "official": [
        ("full", "VAR-d30 paper: FID 1.92, IS 323.1; README / arXiv v1: FID 1.97, IS 334.7"),
    ],
    "code": [
        ("full", "VAR-d30, CoDe protocol: FID 1.95, IS 301 (3.62 s / batch 64 on an L20)"),
        ("variant@16", "VARiant-d16 (N=6): FID 2.05, IS 314, 1.7x"),
        ("variant@8", "VARiant-d8: FID 2.12 (arXiv v1) / 2.15 (conference version), 2.6x"),
        ("variant@2", "VARiant-d2: FID 2.97 (arXiv v1) / 2.67 (conference version), 3.5x"),
        ("code", "CoDe N=8: FID 1.98, IS 302, 1.7x; N=6: FID 2.27, IS 297, 2.9x"),
    ],
}
FIGURES = (("fid", "FID", False), ("inception_score", "IS", True), ("class_accuracy", "class acc %", True))


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    markdown: Path
    plot: Path
    grid: Path


def report_paths(out_dir: Path, overwrite: bool) -> ReportPaths:
    """`report.*` when free (or when overwriting), else the first suffix `-<n>` none of whose files exist."""
    def paths(suffix: str) -> ReportPaths:
        return ReportPaths(out_dir / f"report{suffix}.json", out_dir / f"report{suffix}.md",
                           out_dir / f"pareto{suffix}.png", out_dir / f"grid{suffix}.png")

    candidate, n = paths(""), 1
    while not overwrite and any(p.exists() for p in (candidate.json, candidate.markdown, candidate.plot,
                                                      candidate.grid)):
        n += 1
        candidate = paths(f"-{n}")
    return candidate


# ------------------------------------------------------------------------------------------------ formatting
def fmt(value: Any, spec: str = ".3f", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return missing
    return format(value, spec)


def fmt_bytes(value: int | float | None) -> str:
    if value is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return str(value)


def headline_cost(row: dict[str, Any]) -> dict[str, Any] | None:
    """The cost entry at the largest batch size of a row, or None."""
    costs = row.get("cost") or []
    return max(costs, key=lambda c: c["batch_size"]) if costs else None


def figure(row: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    """(value, bootstrap standard error) of a quality figure of a row (IS: the split mean, se of the whole set)."""
    value = row.get("inception_score_mean" if key == "inception_score" else key)
    se = ((row.get("noise") or {}).get(key) or {}).get("se")
    return value, se


def with_se(row: dict[str, Any], key: str, spec: str) -> str:
    value, se = figure(row, key)
    return fmt(value, spec) + (f" ± {format(se, spec)}" if se is not None and value is not None else "")


def weights_label(row: dict[str, Any]) -> str:
    """`file sha256[:8]` of the weights a row sampled with (and CoDe's refiner)."""
    w = row.get("weights") or {}
    parts = []
    for key in ("model", "refiner"):
        if key in w:
            parts.append(f"{Path(w[key]['file']).name} `{w[key]['sha256'][:8]}`" + (" EMA" if w[key].get("ema")
                                                                                     else ""))
    return " + ".join(parts) or "–"


def row_name(row: dict[str, Any]) -> str:
    name = row["row"]
    if row.get("budget_reached") is False:
        name += f" ⚠ over budget {row['flop_ratio']:.2f}x"
    if row.get("status", "ok") != "ok":
        name += f" ({row['status']})"
    return name


def paired_speedup(ref: dict[str, Any], cost: dict[str, Any], kind: str) -> tuple[float | None, list[float] | None]:
    """(speedup, [speedup of the even rounds, of the odd rounds]) of `cost` over `ref` for `kind` e2e or model.

    When both were timed in the same interleaved rounds (`measure_costs`), the speedup is the median of the per-round
    ratios ref / row (a slow round slows both); the two half-run figures show how far the printed ratio can move
    between runs. Otherwise (older reports) the ratio of the medians, without halves.
    """
    ref_t, row_t = ref.get(f"{kind}_s_rounds"), cost.get(f"{kind}_s_rounds")
    if ref_t and row_t and len(ref_t) == len(row_t) and min(row_t) > 0:
        ratios = [a / b for a, b in zip(ref_t, row_t, strict=True)]
        halves = [statistics.median(ratios[0::2]), statistics.median(ratios[1::2])] if len(ratios) > 1 else None
        return statistics.median(ratios), halves
    return (ref[f"{kind}_s"] / cost[f"{kind}_s"] if cost[f"{kind}_s"] > 0 else None), None


def add_speedups(rows: list[dict[str, Any]], reference: str | None) -> None:
    """Fill `speedup` (end-to-end), `speedup_model` of every cost entry and `flops_speedup` of every row from the
    full row `reference` (else the first full row)."""
    full = next((r for r in rows if r["row"] == reference), None) or next(
        (r for r in rows if r["method"] == "full"), None)
    full_cost = {c["batch_size"]: c for c in (full or {}).get("cost") or []}
    full_flops = (full or {}).get("flops_per_image")
    for row in rows:
        for c in row.get("cost") or []:
            ref = full_cost.get(c["batch_size"])
            for kind, key in (("e2e", "speedup"), ("model", "speedup_model")):
                c[key], c[f"{key}_halves"] = paired_speedup(ref, c, kind) if ref else (None, None)
        flops = row.get("flops_per_image")
        row["flops_speedup"] = full_flops / flops if full_flops and flops else None


# ------------------------------------------------------------------------------------------------ markdown
def _results_table(report: dict[str, Any]) -> list[str]:
    rows = report["rows"]
    label = report.get("metric_kind") or "FID"
    has_acc = any(r.get("class_accuracy") is not None for r in rows)
    has_fid = any(r.get("fid") is not None for r in rows)
    batch = max((headline_cost(r)["batch_size"] for r in rows if headline_cost(r)), default=None)
    head = ["row", "weights"]
    head += [f"{label} ↓"] if has_fid else []
    head += ["IS ↑"] if has_fid else []
    head += ["class acc % ↑"] if has_acc else []
    head += ["PSNR dB / SSIM vs full", "GFLOPs/img", "FLOPs / budget", f"latency e2e s (b={batch})", "speedup",
             "peak mem", "KV cache"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = headline_cost(r) or {}
        fid = r.get("fidelity") or {}
        cells = [row_name(r), weights_label(r)]
        cells += [with_se(r, "fid", ".3f")] if has_fid else []
        cells += [with_se(r, "inception_score", ".2f")] if has_fid else []
        cells += [with_se(r, "class_accuracy", ".1f")] if has_acc else []
        fidelity = "–" if not fid else (f"{fmt(fid.get('psnr_db_finite_mean'), '.2f')} / {fmt(fid.get('ssim'), '.3f')}"
                                        + (f" ({fid['identical_images']} identical)" if fid.get("identical_images")
                                           else ""))
        gflops = r.get("flops_per_image")
        cells += [fidelity, fmt(gflops / 1e9 if gflops else None, ".4g"), fmt(r.get("flop_ratio"), ".3f"),
                  fmt(c.get("e2e_s"), ".4f"), fmt(c.get("speedup"), ".2f") + ("x" if c.get("speedup") else ""),
                  fmt_bytes(c.get("peak_memory_bytes")), fmt_bytes(c.get("kv_cache_bytes"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _flags(report: dict[str, Any]) -> list[str]:
    out = []
    for r in report["rows"]:
        if r.get("budget_reached") is False:
            out.append(f"- ⚠ **{r['row']}** cannot reach the budget: its closed-form FLOPs are {r['flop_ratio']:.2f}x "
                       f"the budget's ({r['budget_note']}). It is reported at the FLOPs it ran; do not compare it "
                       "with the within-budget rows as if it were at the same compute.")
    out += [f"- {s['method']} was left out: {s['why']}" for s in report.get("skipped") or []]
    out += [f"- warning: {w}" for w in report.get("warnings") or []]
    return out


def _noise_section(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["rows"] if r.get("differences")]
    rng = [r for r in report["rows"] if "rng_same_as_full" in r]
    lines = ["## Noise and differences", ""]
    noise = report["protocol"].get("noise", "off")
    lines.append(f"Standard errors (±) and differences: {noise}. Every row samples the same images with the same "
                 "per-image seeds, and every method draws its random numbers exactly as the full model does (one "
                 "token draw per position of every scale, in order)"
                 + (": checked in this run on image 0, " + ("every row matches the full model." if all(
                     r["rng_same_as_full"] for r in rng) else "**rows "
                     + ", ".join(r["row"] for r in rng if not r["rng_same_as_full"]) + " differ** (their "
                     "paired comparisons are not sample by sample).") if rng else ".")
                 + " So image i of two rows starts from the same random stream, and differences are paired sample by "
                 "sample: a paired standard error is much smaller than the two rows' own errors combined.")
    if not rows:
        return lines
    comparators = sorted({c for r in rows for c in r["differences"]}, key=lambda c: (c != report.get("reference_row"),
                                                                                      c))
    keys = [k for k, _, _ in FIGURES if any(k in d for r in rows for d in r["differences"].values())]
    names = {k: n for k, n, _ in FIGURES}
    head = ["row"] + [f"Δ {names[k]} vs {c}" for c in comparators for k in keys]
    lines += ["", "Δ = row − comparator ± paired standard error; **bold** = exceeds the noise.", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["row"]]
        for c in comparators:
            for k in keys:
                d = (r["differences"].get(c) or {}).get(k)
                if d is None:
                    cells.append("–")
                    continue
                text = f"{d['difference']:+.3g} ± {d['se']:.2g}"
                cells.append(f"**{text}**" if d["significant"] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: dict[str, Any], plot: str | None, plot_note: str, grid: str | None) -> str:
    """The Markdown report: results first, then the pictures, the noise, the details and the protocol."""
    rows = report["rows"]
    p = report["protocol"]
    lines = [f"# Evaluation: {report.get('title', 'varianttrain')}", "",
             f"{p['samples']}; sampling protocol `{p['sampling_protocol']}`; quality: {p['metrics']}; device "
             f"{p['device']}.", "", "## Results", ""]
    lines += _results_table(report)
    lines += ["", "Rows name their weights (file and SHA-256 prefix): the training-free methods run on the released "
              "model, `variant` on the supernet (`@supernet`: a method on the supernet's weights). FLOPs / budget: "
              "the row's closed-form sampling FLOPs over those of the budget's VARiant subnet. Latency: end-to-end "
              "median (VQVAE decode included); speedup: the full model's latency / the row's, same run and batch. "
              "PSNR / SSIM: mean over images against the full model's image with the same seed."]
    flags = _flags(report)
    if flags:
        lines += [""] + flags
    lines += ["", f"![Pareto plot]({plot})" if plot else f"No Pareto plot: {plot_note}."]
    if grid:
        lines += ["", "Side by side: one row per method, one column per class (same seed in every row).", "",
                  f"![samples]({grid})"]
    lines += [""] + _noise_section(report)
    if any(r.get("precision") is not None for r in rows):
        lines += ["", "| row | precision | recall |", "|---|---|---|"]
        lines += [f"| {r['row']} | {fmt(r.get('precision'))} | {fmt(r.get('recall'))} |" for r in rows]
    per_batch = [(r["row"], c) for r in rows for c in r.get("cost") or []]
    if per_batch:
        lines += ["", "## Latency per batch size", "",
                  "| row | batch | e2e median (s) | e2e mean (s) | model median (s) | speedup e2e | speedup model | "
                  "img/s | peak mem | KV by model | memory measured as |", "|" + "---|" * 11]
        for name, c in per_batch:
            kv = " + ".join(fmt_bytes(b) for b in c.get("kv_cache_bytes_by_model") or [c["kv_cache_bytes"]])
            lines.append(f"| {name} | {c['batch_size']} | {c['e2e_s']:.4f} | {c['e2e_s_mean']:.4f} | "
                         f"{c['model_s']:.4f} | {fmt(c.get('speedup'), '.2f')} | {fmt(c.get('speedup_model'), '.2f')}"
                         f" | {c['images_per_s']:.2f} | {fmt_bytes(c['peak_memory_bytes'])} | {kv} | "
                         f"{c['peak_memory_kind']} |")
    lines += ["", "## How each method meets the budget", "", f"Budget: {report['budget']['description']}, "
              f"{fmt(report['budget']['flops_per_image'] / 1e9, '.4g')} GFLOPs per image"
              + (f" (from {', '.join(f'{k}: {v}' for k, v in report['budget']['sources'].items())})"
                 if report["budget"].get("sources") else "") + ".", "",
              "| row | plan | closed-form GFLOPs/img | FLOPs / budget | within budget | how |", "|" + "---|" * 6]
    for r in rows:
        within = {True: "yes", False: "**no**", None: "reference"}[r.get("budget_reached")]
        lines.append(f"| {r['row']} | {r.get('plan', '–')} | {fmt(r['flops_closed_form_per_image'] / 1e9, '.4g')} | "
                     f"{fmt(r['flop_ratio'], '.3f')} | {within} | {r['budget_note']} |")
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Provenance", ""]
    for key, value in report["provenance"]["software"].items():
        lines.append(f"- **{key}**: `{json.dumps(value) if not isinstance(value, str) else value}`")
    for key, value in report["provenance"]["inputs"].items():
        lines.append(f"- **{key}**: `{value['file']}`" + (f" sha256 `{value['sha256']}`" if "sha256" in value else ""))
    lines += ["", "## Protocol", ""]
    for key, value in p.items():
        lines.append(f"- **{key}**: `{json.dumps(value) if not isinstance(value, str) else value}`")
    published = report.get("published") or []
    if published:
        lines += ["", "## Published numbers (docs/REFERENCES.md; other hardware: compare quality, not latency)", ""]
        lines += [f"- {text}" for text in published]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plot
def plot_points(rows: list[dict[str, Any]], label_of=lambda r: r["row"], x_key: str = "latency") \
        -> tuple[list[Point], str, str]:
    """(points, x label, y label) of quality against cost; y is the FID when computed, else GFLOPs / image."""
    use_fid = any(r.get("fid") is not None for r in rows)
    pts = []
    for r in rows:
        c = headline_cost(r)
        if x_key == "latency":
            x = c["e2e_s"] if c else None
        elif x_key == "memory":
            x = c["peak_memory_bytes"] / 2**30 if c and c.get("peak_memory_bytes") else None
        else:
            x = r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None
        y, se = figure(r, "fid") if use_fid else ((r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None),
                                                  None)
        if x is None or y is None:
            continue
        pts.append(Point(x, y, label_of(r), r["method"], se,
                         r["flop_ratio"] if r.get("budget_reached") is False else None, r["method"] == "full"))
    return pts, ("FID" if use_fid else "GFLOPs / image (no quality computed)"), ""


def plot_pareto(report: dict[str, Any], path: Path) -> tuple[Path | None, str]:
    """Quality vs end-to-end latency (GFLOPs when nothing was timed); (path, '') or (None, why not)."""
    rows = report["rows"]
    timed = any(headline_cost(r) for r in rows)
    pts, ylabel, _ = plot_points(rows, x_key="latency" if timed else "flops")
    quality = any(r.get("fid") is not None for r in rows)
    if len(pts) < 2:
        why = ("fewer than two rows have both a cost and a quality figure (one method: nothing to trade off; "
               "`python -m varianttrain.evaluation.summary` plots several runs together)")
        return None, why
    if quality:
        ylabel = f"{report.get('metric_kind') or 'FID'} (lower is better; bars: ±1 s.e.)"
    batch = max((headline_cost(r)["batch_size"] for r in rows if headline_cost(r)), default=None)
    xlabel = f"end-to-end latency per batch of {batch} (s)" if timed else "GFLOPs per image"
    return quality_plot(pts, path, xlabel, ylabel, report.get("title", "")), ""


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: dict[str, Any], paths: ReportPaths) -> ReportPaths:
    """Add speedups, then write the plot, the JSON and the Markdown (the grid is written by the runner)."""
    paths.json.parent.mkdir(parents=True, exist_ok=True)
    add_speedups(report["rows"], report.get("reference_row"))
    plot, note = plot_pareto(report, paths.plot)
    report["plot"] = plot.name if plot else None
    report["plot_note"] = note
    grid = report.get("grid")  # written by the runner when the run sampled images
    _write_text_atomic(paths.json, json.dumps(report, indent=2, default=str) + "\n")
    _write_text_atomic(paths.markdown, render_markdown(report, report["plot"], note, grid))
    return paths
