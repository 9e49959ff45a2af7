"""Interleaved cost rounds and paired speedups (varianttrain.evaluation.cost / report)."""

import pytest
from conftest import random_tiny_var, tiny_vqvae

from varianttrain.evaluation.cost import TimedMethod, block_time_share, measure_costs
from varianttrain.evaluation.report import add_speedups, paired_speedup
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.sampler import SamplingMethod

PN = (1, 2, 3)


class Recording(SamplingMethod):
    """The full model, writing its name into a shared log whenever a sampling call begins."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def begin(self, ctx):
        self.log.append((self.name, ctx.num_images))
        return super().begin(ctx)


def test_rounds_interleave_methods_and_rotate_their_order():
    var, vqvae = random_tiny_var(2, PN, 16), tiny_vqvae(PN, 16)
    log = []
    entries = [TimedMethod(n, var, Recording(n, log)) for n in ("a", "b", "c")]
    costs = measure_costs(entries, vqvae, SamplingConfig.preset("official"), batch_sizes=(2,), warmup=1, repeats=3)
    # warm-up a, b, c; then per round r: model-only calls in the order rotated by r, then end-to-end in that order;
    # then one call per entry for the memory peak.
    names = [n for n, _ in log]
    assert names[:3] == ["a", "b", "c"]
    rounds = names[3:3 + 18]
    assert rounds == ["a", "b", "c"] * 2 + ["b", "c", "a"] * 2 + ["c", "a", "b"] * 2
    for name in "abc":
        (row,) = costs[name]
        assert row.repeats == 3 and len(row.model_s_rounds) == len(row.e2e_s_rounds) == 3
        assert row.model_s == sorted(row.model_s_rounds)[1] and row.e2e_s == sorted(row.e2e_s_rounds)[1]


def test_duplicate_entry_names_are_refused():
    var = random_tiny_var(2, PN, 16)
    with pytest.raises(ValueError, match="unique"):
        measure_costs([TimedMethod("a", var, SamplingMethod())] * 2, tiny_vqvae(PN, 16),
                      SamplingConfig.preset("official"), batch_sizes=(1,), warmup=0, repeats=1)


def test_paired_speedup_cancels_a_slow_round():
    # Rounds 3-5 ran on a machine twice as busy, for both methods alike: every per-round ratio is 2.
    ref = {"model_s_rounds": [1.0, 1.0, 2.0, 2.0, 2.0], "model_s": 2.0}
    row = {"model_s_rounds": [0.5, 0.5, 1.0, 1.0, 1.0], "model_s": 1.0}
    speedup, halves = paired_speedup(ref, row, "model")
    assert speedup == 2.0 and halves == [2.0, 2.0]
    # the median of the ratios, not the ratio of the medians (1.0 / 1.0 here)
    ref = {"e2e_s_rounds": [1.0, 1.0, 3.0], "e2e_s": 1.0}
    row = {"e2e_s_rounds": [0.5, 1.0, 1.0], "e2e_s": 1.0}
    assert paired_speedup(ref, row, "e2e")[0] == 2.0
    row = {"e2e_s_rounds": [1.0, 4.0], "e2e_s": 1.0}  # not the same rounds: ratio of the medians, no halves
    assert paired_speedup({"e2e_s": 3.0, "e2e_s_rounds": [3.0]}, row, "e2e") == (3.0, None)


def test_add_speedups_fills_both_kinds_against_the_full_row():
    full = {"row": "full", "method": "full", "flops_per_image": 10.0,
            "cost": [{"batch_size": 4, "model_s": 2.0, "e2e_s": 3.0, "model_s_rounds": [2.0, 2.0],
                      "e2e_s_rounds": [3.0, 3.0]}]}
    fast = {"row": "variant", "method": "variant", "flops_per_image": 4.0,
            "cost": [{"batch_size": 4, "model_s": 1.0, "e2e_s": 2.0, "model_s_rounds": [1.0, 1.0],
                      "e2e_s_rounds": [2.0, 2.0]}]}
    add_speedups([full, fast], "full")
    c = fast["cost"][0]
    assert c["speedup_model"] == 2.0 and c["speedup"] == 1.5 and c["speedup_model_halves"] == [2.0, 2.0]
    assert fast["flops_speedup"] == 2.5 and full["cost"][0]["speedup"] == 1.0


def test_block_time_share_is_a_fraction_and_removes_its_hooks():
    var, vqvae = random_tiny_var(3, PN, 16), tiny_vqvae(PN, 16)
    share = block_time_share(var, vqvae, SamplingConfig.preset("official"), batch_size=2, repeats=2)
    assert 0.0 < share < 1.0
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in var.blocks)
