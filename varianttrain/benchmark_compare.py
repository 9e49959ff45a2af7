"""Before/after table of two sampling benchmark JSONs (`python -m varianttrain.benchmark ... --out FILE.json`).

    python -m varianttrain.benchmark_compare BEFORE.json AFTER.json

Each run's figures are ratios within that run (speedups against its own full model, timed interleaved), so two
runs compare by their ratios even when the machine was busier during one of them. Per sampling row: measured
speedup, measured/ideal, measured/expected (bridge-aware), operator calls and host syncs of one call, before ->
after. Then, per batch and depth budget, how DepthVAR's measured/ideal compares with VARiant's (the target:
at least 0.9: per-token depth should not lose more than a tenth of its FLOP saving to its own overhead).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

_BUDGET = re.compile(r"^(?P<method>.+)-d(?P<depth>\d+)$")


def _sample_rows(result: dict) -> dict[tuple[int, str], dict]:
    return {(r["batch"], r["name"]): r for r in result["rows"] if r["kind"] == "sample"}


def _ratio(r: dict) -> float:
    return r["measured_speedup"] / r["ideal_speedup"]


def _vs_expected(r: dict) -> str:
    return "-" if r.get("expected_speedup") is None else f"{r['measured_speedup'] / r['expected_speedup']:.2f}"


def _ops(r: dict, key: str) -> str:
    return "-" if not r.get("ops") else str(r["ops"][key])


def method_table(before: dict, after: dict) -> str:
    """One line per sampling row present in both runs."""
    b_rows, a_rows = _sample_rows(before), _sample_rows(after)
    lines = ["| plan | batch | ideal | expected (after) | measured | measured/ideal | measured/expected | ops / call | "
             "aten calls / call | host syncs |", "|" + "---|" * 10]
    for key, a in a_rows.items():
        b = b_rows.get(key)
        if b is None:
            continue
        expected = "-" if a.get("expected_speedup") is None else f"{a['expected_speedup']:.2f}x"
        lines.append(f"| {key[1]} | {key[0]} | {a['ideal_speedup']:.2f}x | {expected} | "
                     f"{b['measured_speedup']:.2f}x -> {a['measured_speedup']:.2f}x | "
                     f"{_ratio(b):.2f} -> {_ratio(a):.2f} | {_vs_expected(b)} -> {_vs_expected(a)} | "
                     f"{_ops(b, 'ops')} -> {_ops(a, 'ops')} | {_ops(b, 'aten_calls')} -> {_ops(a, 'aten_calls')} | "
                     f"{_ops(b, 'host_syncs')} -> {_ops(a, 'host_syncs')} |")
    return "\n".join(lines)


def ratio_of_ratios(result: dict, method: str = "depthvar", reference: str = "variant") -> dict[tuple[int, int], float]:
    """(batch, depth) -> method's measured/ideal over the reference's, at the same budget."""
    rows = _sample_rows(result)
    out = {}
    for (batch, name), r in rows.items():
        m = _BUDGET.match(name)
        if m and m["method"] == method and (batch, f"{reference}-d{m['depth']}") in rows:
            out[(batch, int(m["depth"]))] = _ratio(r) / _ratio(rows[(batch, f"{reference}-d{m['depth']}")])
    return out


def target_table(before: dict, after: dict, target: float = 0.9) -> str:
    b, a = ratio_of_ratios(before), ratio_of_ratios(after)
    lines = [f"| batch | budget | DepthVAR / VARiant measured/ideal, before | after | target >= {target} |",
             "|---|---|---|---|---|"]
    for key in sorted(a, key=lambda k: (k[0], -k[1])):
        before_value = "-" if key not in b else f"{b[key]:.2f}"
        lines.append(f"| {key[0]} | d{key[1]} | {before_value} | {a[key]:.2f} | "
                     f"{'reached' if a[key] >= target else 'not reached'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    before, after = (json.loads(p.read_text()) for p in (args.before, args.after))
    text = method_table(before, after) + "\n\n" + target_table(before, after)
    print(text)
    return text


if __name__ == "__main__":
    main()
