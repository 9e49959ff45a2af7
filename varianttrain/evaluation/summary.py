"""One table and one set of plots over many evaluation reports (budgets, methods, runs).

    python -m varianttrain.evaluation.summary runs/eval/d16/report.json runs/eval/d8/report.json --out runs/summary
    python -m varianttrain.evaluation.summary runs/eval --out runs/summary     # every report.json below a folder

Writes ``summary.md`` (the table, the plots embedded), ``summary.json`` and, for every quality figure the reports
have (FID, class accuracy), its plots against GFLOPs per image, measured latency and peak memory:
``<figure>_vs_flops.png``, ``<figure>_vs_latency.png``, ``<figure>_vs_memory.png``.

A run is listed once: two rows with the same run identity (method, knobs, plan, weights, sampling, seeds, the images
scored: everything but the budget they were asked for) are the same samples, e.g. a method that cannot go below some
FLOPs and runs the same plan at d = 4 and d = 2, or the full model of every budget. Such a row names every budget it
was asked for.
Reports whose quality figures come from different extractors or reference statistics are not comparable and are
refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from varianttrain.evaluation.plots import Point, quality_plot
from varianttrain.evaluation.report import FIGURES, figure, fmt, fmt_bytes, headline_cost, weights_label

PLOTS = (("flops", "GFLOPs per image (sampling, CFG included)"), ("latency", "end-to-end latency per batch (s)"),
         ("memory", "peak memory (GiB)"))


class SummaryError(ValueError):
    """The reports cannot be summarised together (unreadable, or not comparable); the message says why."""


def find_reports(paths: Sequence[str | Path]) -> list[Path]:
    """report.json files: the files given, and every report.json below the folders given."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            below = sorted(p.rglob("report.json"))
            if not below:
                raise SummaryError(f"{p}: no report.json below this folder")
            found += below
        elif p.is_file():
            found.append(p)
        else:
            raise SummaryError(f"{p}: no such report or folder")
    return list(dict.fromkeys(found))


def load_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise SummaryError(f"{path} is not a readable report ({err})") from err
        if not isinstance(report, dict) or "rows" not in report or "budget" not in report:
            raise SummaryError(f"{path} is not an eval.py report.json (no 'rows' / 'budget'); reports from before "
                               "the weights and noise columns cannot be summarised: rerun eval.py (samples resume)")
        report["_path"] = str(path)
        reports.append(report)
    metric = {(r.get("metric_kind"), r["protocol"].get("metrics")) for r in reports if r.get("metric_kind")}
    if len({m[0] for m in metric}) > 1 or len({_reference(m[1]) for m in metric}) > 1:
        raise SummaryError("the reports compute quality differently and cannot share a table: "
                           + "; ".join(sorted(str(m[1]) for m in metric)))
    return reports


def _reference(metrics_line: str | None) -> str:
    return (metrics_line or "").split("reference ")[-1].split(",")[0]


def budget_label(report: dict[str, Any]) -> str:
    b = report["budget"]
    return "full" if b["depth"] >= b["total_depth"] else f"d={b['depth']}"


def merge_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per run identity (first occurrence wins), listing every budget it was reported under."""
    merged: dict[str, dict[str, Any]] = {}
    protocols = {r["protocol"]["sampling_protocol"] for r in reports}
    for report in reports:
        label = budget_label(report)
        for row in report["rows"]:
            key = row.get("run_identity") or f"{report['_path']}|{row['row']}"
            entry = merged.get(key)
            if entry is None:
                entry = merged[key] = {"row": row, "budgets": [], "flop_ratios": {}, "reports": [],
                                       "protocol": report["protocol"]["sampling_protocol"] if len(protocols) > 1
                                       else None}
            elif entry["row"].get("status") != "ok" and row.get("status") == "ok":
                entry["row"] = row  # the same run, sampled here (the other report only timed it)
            if label not in entry["budgets"]:
                entry["budgets"].append(label)
                entry["flop_ratios"][label] = row.get("flop_ratio")
            entry["reports"].append(report["_path"])
            if row.get("budget_reached") is False:
                entry["over_budget"] = max(entry.get("over_budget", 0.0), row["flop_ratio"])
    return list(merged.values())


def _label(entry: dict[str, Any]) -> str:
    row = entry["row"]
    text = f"{row['row']} ({', '.join(entry['budgets'])})"
    return text + (f" [{entry['protocol']}]" if entry["protocol"] else "")


def times(value: float | None, halves: list[float] | None = None) -> str:
    """A speedup as '2.31x', with the two half-run figures when known ('2.31x (2.28-2.35)')."""
    if value is None:
        return "–"
    return f"{value:.2f}x" + (f" ({min(halves):.2f}-{max(halves):.2f})" if halves else "")


def table(entries: list[dict[str, Any]], metric_kind: str | None) -> list[str]:
    keys = [(k, n) for k, n, _ in FIGURES if any(figure(e["row"], k)[0] is not None for e in entries)]
    names = {"fid": metric_kind or "FID"}
    head = ["row", "budgets", "weights"] + [names.get(k, n) for k, n in keys] + [
        "GFLOPs/img", "FLOPs / budget", "batch", "model-only (s)", "end-to-end (s)", "FLOPs speedup",
        "speedup model-only", "speedup e2e", "peak mem", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(entries, key=lambda e: (e["row"]["method"] != "full", -(e["row"].get("flops_per_image") or 0)))
    for e in order:
        r = e["row"]
        c = headline_cost(r) or {}
        cells = [r["row"] + (" ⚠" if "over_budget" in e else ""), ", ".join(e["budgets"]), weights_label(r)]
        for k, _ in keys:
            value, se = figure(r, k)
            spec = ".3f" if k == "fid" else ".2f"
            cells.append(fmt(value, spec) + (f" ± {format(se, spec)}" if se is not None and value is not None
                                             else ""))
        ratios = ", ".join(f"{fmt(v, '.2f')}x ({b})" for b, v in e["flop_ratios"].items()) \
            if r["method"] != "full" else "reference"
        gflops = r.get("flops_per_image")
        cells += [fmt(gflops / 1e9 if gflops else None, ".4g"), ratios, fmt(c.get("batch_size"), "d"),
                  fmt(c.get("model_s"), ".4f"), fmt(c.get("e2e_s"), ".4f"), times(r.get("flops_speedup")),
                  times(c.get("speedup_model"), c.get("speedup_model_halves")),
                  times(c.get("speedup"), c.get("speedup_halves")), fmt_bytes(c.get("peak_memory_bytes")),
                  (f"over budget ({e['over_budget']:.2f}x)" if "over_budget" in e else r.get("status", "ok"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def points(entries: list[dict[str, Any]], key: str, x: str) -> list[Point]:
    out = []
    for e in entries:
        r = e["row"]
        y, se = figure(r, key)
        c = headline_cost(r)
        xv = {"flops": (r.get("flops_per_image") or 0) / 1e9 or None,
              "latency": c["e2e_s"] if c else None,
              "memory": c["peak_memory_bytes"] / 2**30 if c and c.get("peak_memory_bytes") else None}[x]
        if y is None or xv is None:
            continue
        out.append(Point(xv, y, _label(e), r["method"], se, e.get("over_budget"), r["method"] == "full"))
    return out


def summarize(paths: Sequence[str | Path], out: Path) -> dict[str, Any]:
    """Write the summary of the reports `paths` into `out`; returns what summary.json holds."""
    reports = load_reports(find_reports(paths))
    entries = merge_rows(reports)
    metric_kind = next((r.get("metric_kind") for r in reports if r.get("metric_kind")), None)
    out.mkdir(parents=True, exist_ok=True)
    plots: list[tuple[str, str]] = []
    for key, name, higher in FIGURES:
        ylabel = (metric_kind if key == "fid" and metric_kind else name) + \
            (" (higher is better" if higher else " (lower is better") + "; bars: ±1 s.e.)"
        for x, xlabel in PLOTS:
            pts = points(entries, key, x)
            if len(pts) < 2:
                continue
            path = out / f"{key}_vs_{x}.png"
            title = f"{name} vs {x}: {len(reports)} report(s), budgets " + ", ".join(
                dict.fromkeys(budget_label(r) for r in reports))
            quality_plot(pts, path, xlabel, ylabel, title, higher_is_better=higher, log_x=(x == "memory"))
            plots.append((f"{name} vs {x}", path.name))
    lines = ["# Evaluation summary", "",
             f"{len(reports)} report(s): " + ", ".join(f"`{r['_path']}` ({budget_label(r)})" for r in reports) + ".",
             "", "One line per run: a run reported under several budgets (the same samples) is listed once with "
             "every budget; ⚠ = over budget at one of them (drawn hollow). ± = bootstrap standard error. Latency "
             "and memory are as measured by each report (compare rows of one machine): medians per batch; a "
             "speedup is the median of per-round ratios to the full row timed in the same interleaved rounds, in "
             "brackets the same figure from the even and the odd rounds alone (how far it moves between runs).", ""]
    lines += table(entries, metric_kind)
    for title, name in plots:
        lines += ["", f"### {title}", "", f"![{title}]({name})"]
    if not plots:
        lines += ["", "No plots: fewer than two rows have a quality figure and a cost."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    result = {"reports": [r["_path"] for r in reports], "metric_kind": metric_kind, "plots": [p for _, p in plots],
              "rows": [{"row": e["row"]["row"], "method": e["row"]["method"], "budgets": e["budgets"],
                        "flop_ratios": e["flop_ratios"], "over_budget": e.get("over_budget"),
                        "weights": weights_label(e["row"]), "status": e["row"].get("status"),
                        **{k: figure(e["row"], k)[0] for k, _, _ in FIGURES},
                        **{f"{k}_se": figure(e["row"], k)[1] for k, _, _ in FIGURES},
                        "gflops": (e["row"].get("flops_per_image") or 0) / 1e9 or None,
                        "latency_s": (headline_cost(e["row"]) or {}).get("e2e_s"),
                        "peak_memory_bytes": (headline_cost(e["row"]) or {}).get("peak_memory_bytes"),
                        "reports": e["reports"]} for e in entries]}
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     epilog="See docs/EVALUATION.md, section 'Summary over runs'.")
    parser.add_argument("reports", nargs="+", help="report.json files, or folders searched for report.json")
    parser.add_argument("--out", required=True, help="output folder (summary.md, summary.json, plots)")
    args = parser.parse_args(argv)
    try:
        result = summarize(args.reports, Path(args.out))
    except SummaryError as err:
        print(f"summary: error: {err}", file=sys.stderr)
        return 2
    print(f"summary: {len(result['rows'])} rows from {len(result['reports'])} report(s) -> "
          f"{Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
