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
    """bench_sampling raises when the sampler's FLOP count differs from a method's budget_match (closed form)."""
    preset = benchmark.PRESETS["tiny"]()
    torch.manual_seed(0)
    var = benchmark.VAR(preset.var)
    vqvae = benchmark.VQVAE(preset.vqvae).freeze()
    methods = benchmark.sampling_methods(var, preset, "nested", ["variant", "depthvar", "stagevar", "fastvar",
                                                                  "earlyexit"])
    rows = benchmark.bench_sampling(var, vqvae, methods, 1, torch.device("cpu"), benchmark.SamplingConfig(),
                                    warmup=0, repeats=1, peak_tflops=None)
    assert [r.name for r in rows] == list(methods)
    assert all(r.flops_per_item == methods[r.name].budget_match.flops.total for r in rows)


def test_optimizer_step_of_a_training_config():
    result = benchmark.main(["--config", str(REPO_ROOT / "configs" / "smoke_cpu.yaml"), "--train-batch", "2",
                             "--steps", "1"])
    rows = result["optimizer_step"]
    assert [r["depth"] for r in rows] == ["full", "d2", "d1"]  # smoke_cpu: depth choices 2, 1
    assert all(r["ms_per_step"] > 0 and r["images_per_s"] == pytest.approx(2000 / r["ms_per_step"]) for r in rows)
