"""The one benchmark module (`python -m varianttrain.benchmark`): closed-form costs, sampled FLOPs against each
method's declared cost, and a training config's optimizer step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from varianttrain import benchmark

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny matmuls: threads only contend on shared cores (restored by conftest)


def test_analytic_tiny_preset(tmp_path):
    result = benchmark.main(["--preset", "tiny", "--analytic", "--out", str(tmp_path / "a.json")])
    rows = {r["method"]: r for r in result["analytic"]}
    assert list(rows)[0] == "full" and {"variant-d4", "depthvar-d2", "fastvar-d4", "earlyexit-d2"} <= set(rows)
    full = rows["full"]
    assert full["ideal_speedup_blocks"] == full["ideal_speedup_total"] == 1.0
    # KV cache of the full tiny model (depth 8, width 128, 155 tokens), both CFG rows, K and V, bf16, batch 64
    assert full["kv_cache_gb"] == 64 * 2 * 155 * 8 * 2 * 128 * 2 / 2**30
    assert rows["variant-d2"]["ideal_speedup_blocks"] > rows["variant-d4"]["ideal_speedup_blocks"] > 1
    assert json.loads((tmp_path / "a.json").read_text())["analytic"] == result["analytic"]


def test_sampling_counts_what_each_method_declares():
    """bench_sampling raises when the sampler's FLOP count differs from a method's budget_match (closed form); the
    bridge-aware expectation follows from the bridge-only and full timings; one call per plan is profiled."""
    preset = benchmark.PRESETS["tiny"]()
    torch.manual_seed(0)
    var = benchmark.VAR(preset.var)
    vqvae = benchmark.VQVAE(preset.vqvae).freeze()
    methods = benchmark.sampling_methods(var, preset, "nested", ["variant", "depthvar", "stagevar", "fastvar",
                                                                  "earlyexit"])
    assert list(methods)[:2] == ["full", benchmark.BRIDGE_ONLY]
    rows = benchmark.bench_sampling(var, vqvae, methods, 1, torch.device("cpu"), benchmark.SamplingConfig(),
                                    warmup=0, repeats=1, peak_tflops=None, bridge_scales=preset.bridge_scales)
    assert [r.name for r in rows] == list(methods)
    assert all(r.flops_per_item == methods[r.name].budget_match.flops.total for r in rows)
    at = {r.name: r for r in rows}
    full, bridge = at["full"], at[benchmark.BRIDGE_ONLY]
    assert bridge.expected_speedup is None and full.expected_speedup == pytest.approx(1.0)
    # VARiant keeps the bridge in full: expected time = bridge + (full - bridge) x its share of the blocks after it
    block_share = (1 / at["variant-d2"].ideal_speedup - 1 / bridge.ideal_speedup) / (1 - 1 / bridge.ideal_speedup)
    predicted = bridge.ms + (full.ms - bridge.ms) * block_share
    assert at["variant-d2"].expected_speedup == pytest.approx(full.ms / predicted)
    assert all(r.ops["ops"] > 0 and r.ops["aten_calls"] > r.ops["ops"] and r.ops["host_syncs"] == 0 for r in rows)
    assert at["depthvar-d2"].ops["ops"] > at["variant-d2"].ops["ops"]  # ranks, gathers and proxies cost calls
    (summary,) = benchmark.bridge_summary(rows)
    assert summary["time_share"] == pytest.approx(bridge.ms / full.ms)
    assert summary["flop_ceiling"] == pytest.approx(full.flops_per_item / bridge.flops_per_item)


def test_rounds_are_interleaved_with_a_rotating_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    times = benchmark.time_interleaved(fns, torch.device("cpu"), warmup=1, rounds=4)
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab" + "abc"
    assert all(len(t.wall_s) == len(t.cpu_s) == 4 for t in times.values())
    assert {name: t.last for name, t in times.items()} == {"a": 13, "b": 14, "c": 15}  # the last round's returns
    with pytest.raises(ValueError, match="--repeats"):
        benchmark.time_interleaved(fns, torch.device("cpu"), warmup=0, rounds=0)


def test_main_times_the_chosen_budgets_with_the_floor(tmp_path, monkeypatch):
    out = tmp_path / "s.json"
    calls = []
    real_generate = benchmark.generate
    monkeypatch.setattr(benchmark, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k))
    result = benchmark.main(["--preset", "tiny", "--device", "cpu", "--no-train", "--batch", "1", "--methods",
                             "variant", "--depths", "2", "--repeats", "2", "--warmup", "0", "--no-op-count",
                             "--out", str(out)])
    assert [r["name"] for r in result["rows"]] == ["full", benchmark.BRIDGE_ONLY, "variant-d2"]
    assert len(calls) == 3 * 2  # without op counts on a CPU, the FLOP check reuses the timed calls' outputs
    # tiny preset: 7 scales, 8 blocks of width 128 with 4 heads, bridge 4: full 7*8 block calls, bridge-only 4*8,
    # VARiant d2 4*8 + 3*2; each reads 12 C^2 weights + 8 C biases + H attention scales, float32
    assert [r["block_calls"] for r in result["rows"]] == [56, 32, 38]
    per_call = (12 * 128 * 128 + 8 * 128 + 4) * 4
    assert [r["block_weight_gb"] for r in result["rows"]] == pytest.approx([n * per_call / 1e9 for n in (56, 32, 38)])
    assert all(len(r["ms_rounds"]) == 2 and r["ops"] is None for r in result["rows"])
    assert [b["batch"] for b in result["bridge"]] == [1] and result["rounds"] == 2
    assert json.loads(out.read_text())["command"].endswith(f"--out {out}")
    with pytest.raises(ValueError, match="depth choices are"):
        benchmark.main(["--preset", "tiny", "--analytic", "--depths", "3"])


def test_optimizer_step_of_a_training_config():
    result = benchmark.main(["--config", str(REPO_ROOT / "configs" / "smoke_cpu.yaml"), "--train-batch", "2",
                             "--steps", "1"])
    rows = result["optimizer_step"]
    assert [r["depth"] for r in rows] == ["full", "d2", "d1"]  # smoke_cpu: depth choices 2, 1
    assert all(r["ms_per_step"] > 0 and r["images_per_s"] == pytest.approx(2000 / r["ms_per_step"]) for r in rows)


def _sample_row(name: str, batch: int, ideal: float, measured: float, syncs: int) -> dict:
    return {"kind": "sample", "name": name, "batch": batch, "ideal_speedup": ideal, "measured_speedup": measured,
            "expected_speedup": None if name == "full" else 0.5 * ideal, "ops": {"ops": 10, "aten_calls": 20,
                                                                               "host_syncs": syncs}}


def test_compare_puts_depthvar_against_variant_at_the_same_budget(tmp_path):
    from varianttrain import benchmark_compare

    def run(depthvar_measured, syncs):
        return {"rows": [_sample_row("full", 1, 1.0, 1.0, 0), _sample_row("variant-d8", 1, 2.0, 1.6, 0),
                         _sample_row("depthvar-d8", 1, 2.5, depthvar_measured, syncs)]}

    before, after = run(1.0, 4), run(1.9, 0)
    assert benchmark_compare.ratio_of_ratios(after) == {(1, 8): pytest.approx((1.9 / 2.5) / (1.6 / 2.0))}
    paths = [tmp_path / "before.json", tmp_path / "after.json"]
    for path, result in zip(paths, (before, after), strict=True):
        path.write_text(json.dumps(result))
    text = benchmark_compare.main([str(p) for p in paths])
    assert "| depthvar-d8 | 1 | 2.50x | 1.25x | 1.00x -> 1.90x | 0.40 -> 0.76 | 0.80 -> 1.52 | 10 -> 10 |" in text
    assert "| 1 | d8 | 0.50 | 0.95 | reached |" in text
