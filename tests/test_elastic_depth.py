"""Elastic-depth invariants: plans against a naive reference, causality of the bridge zone, cached = uncached."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tiny_var, tiny_vqvae

from varianttrain.models.depth_plan import (
    DepthPlan,
    ScalePlan,
    equidistant_layer_subset,
    layer_subset,
    nested_layer_subsets,
)
from varianttrain.models.var import VAR
from varianttrain.models.vqvae import VQVAE
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.host_syncs import HostSyncCounter
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, StaticPlanMethod, generate

PATCH_NUMS = (1, 2, 3, 4)
DEPTH = 6


def _randomised_var(seed: int = 0) -> VAR:
    return random_tiny_var(DEPTH, PATCH_NUMS, vocab_size=32, seed=seed)


@pytest.fixture(scope="module")
def var() -> VAR:
    return _randomised_var()


@pytest.fixture(scope="module")
def vqvae() -> VQVAE:
    return tiny_vqvae(PATCH_NUMS, vocab_size=32, seed=1)


def _inputs(var: VAR, B: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, var.num_classes, (B,), generator=g)
    x = torch.randn(B, var.L - var.first_l, var.Cvae, generator=g)
    return label, x


def naive_forward(var: VAR, label, x_in, active_DBL: torch.Tensor) -> torch.Tensor:
    """Reference: every block on the whole sequence with inactive keys masked; inactive tokens keep their state."""
    x, cond = var.embed_inputs(label, x_in)
    allowed = var.allowed_LL
    for b, block in enumerate(var.blocks):
        active_BL = active_DBL[b]
        mask = allowed[None, None] & active_BL[:, None, None, :]
        y = block(x, cond, attn_mask=mask)
        x = torch.where(active_BL[..., None], y, x)
    return var.logits(x, cond)


def _active_from_plan(var: VAR, plan: DepthPlan, B: int) -> torch.Tensor:
    rows = []
    for b in range(var.depth):
        sel = plan.block_tokens(b)
        if sel is None:
            rows.append(torch.ones(B, var.L, dtype=torch.bool))
        elif isinstance(sel, int):
            row = torch.zeros(B, var.L, dtype=torch.bool)
            row[:, :sel] = True
            rows.append(row)
        else:
            rows.append(sel.expand(B, -1))
    return torch.stack(rows)


def _random_token_plan(var: VAR, B: int, seed: int, from_scale: int = 2) -> DepthPlan:
    """Per-token masks with unequal counts per row (exercises padding) at scales >= from_scale."""
    g = torch.Generator().manual_seed(seed)
    scales = []
    for k, pn in enumerate(PATCH_NUMS):
        if k < from_scale:
            scales.append(ScalePlan())
        else:
            scales.append(ScalePlan(token_mask_BDl=torch.rand(B, var.depth, pn * pn, generator=g) < 0.6))
    return DepthPlan(var.depth, PATCH_NUMS, scales)


# ---------------------------------------------------------------- layer subsets
def test_equidistant_rule_closed_form():
    assert equidistant_layer_subset(30, 16) == (0, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29)
    assert equidistant_layer_subset(30, 8) == (0, 4, 8, 12, 16, 20, 24, 29)
    assert equidistant_layer_subset(30, 4) == (0, 9, 19, 29)
    assert equidistant_layer_subset(30, 2) == (0, 29)
    # The paper's formula does not nest at D = 30 (8 is in I_8, not in I_16).
    assert not set(equidistant_layer_subset(30, 8)) <= set(equidistant_layer_subset(30, 16))


@pytest.mark.parametrize("total", [6, 12, 16, 24, 30, 36])
def test_nested_rule_nests_and_spreads(total):
    choices = tuple(d for d in (16, 8, 4, 2) if d <= total)
    subsets = nested_layer_subsets(total, choices)
    chain = sorted(choices)
    for small, big in zip(chain, chain[1:], strict=False):
        assert set(subsets[small]) <= set(subsets[big]), (small, big)
    for d, subset in subsets.items():
        assert len(subset) == d == len(set(subset))
        assert subset[0] == 0 and subset[-1] == total - 1  # first and last block always kept (d >= 2)
        # as evenly spaced as possible: each layer within one gap of the ideal position
        ideal = [i * (total - 1) / (d - 1) for i in range(d)]
        assert max(abs(a - b) for a, b in zip(subset, ideal, strict=True)) <= (total - 1) / (d - 1)
    assert layer_subset(total, choices[0], "nested", choices) == subsets[choices[0]]


def test_subset_rule_errors():
    with pytest.raises(ValueError, match="outside 1..30"):
        equidistant_layer_subset(30, 31)
    with pytest.raises(ValueError, match="unknown layer-subset rule"):
        layer_subset(30, 8, "random")


# ---------------------------------------------------------------- teacher forcing
def test_full_plan_equals_plain_forward(var):
    label, x = _inputs(var)
    with torch.no_grad():
        plain = var(label, x)
        planned = var(label, x, DepthPlan.full(var.depth, PATCH_NUMS))
    assert torch.equal(plain, planned)


def test_all_ones_token_mask_equals_full_model(var):
    label, x = _inputs(var)
    ones = [ScalePlan(token_mask_BDl=torch.ones(3, var.depth, pn * pn, dtype=torch.bool)) for pn in PATCH_NUMS]
    with torch.no_grad():
        full = var(label, x)
        masked = var(label, x, DepthPlan(var.depth, PATCH_NUMS, ones))
    torch.testing.assert_close(masked, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", [4, 2, 1])
def test_subnet_plan_equals_naive_reference(var, d):
    label, x = _inputs(var)
    plan = DepthPlan.subnet(var.depth, PATCH_NUMS, 2, equidistant_layer_subset(var.depth, d))
    with torch.no_grad():
        got = var(label, x, plan)
        ref = naive_forward(var, label, x, _active_from_plan(var, plan, 3))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_per_token_plan_equals_naive_reference(var):
    label, x = _inputs(var)
    plan = _random_token_plan(var, 3, seed=5)
    with torch.no_grad():
        got = var(label, x, plan)
        ref = naive_forward(var, label, x, _active_from_plan(var, plan, 3))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_bridge_logits_do_not_depend_on_flexible_depth(var):
    label, x = _inputs(var)
    bridge = 2
    n_bridge = sum(pn * pn for pn in PATCH_NUMS[:bridge])
    with torch.no_grad():
        outs = [var(label, x, DepthPlan.subnet(var.depth, PATCH_NUMS, bridge, equidistant_layer_subset(var.depth, d)))
                for d in (6, 4, 2, 1)]
    for other in outs[1:]:
        torch.testing.assert_close(other[:, :n_bridge], outs[0][:, :n_bridge], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(other[:, n_bridge:], outs[0][:, n_bridge:], atol=1e-3)


def test_skipped_blocks_run_only_on_the_bridge_prefix(var):
    """Compute really drops: a block outside the subset sees only the bridge tokens."""
    label, x = _inputs(var)
    bridge, keep = 2, (0, 5)
    seen = {}

    def recorder(b):
        def hook(module, args, output):
            seen[b] = args[0].shape[1]  # returns None: the block output is left alone
        return hook

    hooks = [blk.register_forward_hook(recorder(b)) for b, blk in enumerate(var.blocks)]
    try:
        with torch.no_grad():
            var(label, x, DepthPlan.subnet(var.depth, PATCH_NUMS, bridge, keep))
    finally:
        for h in hooks:
            h.remove()
    n_bridge = sum(pn * pn for pn in PATCH_NUMS[:bridge])
    assert seen == {b: (var.L if b in keep else n_bridge) for b in range(var.depth)}


def test_subnet_gradients_flow_only_through_used_weights(var):
    var_train = _randomised_var(3).train()
    label, x = _inputs(var_train)
    plan = DepthPlan.subnet(var_train.depth, PATCH_NUMS, 4, (0, 2))  # bridge = all scales: every block used
    var_train(label, x, plan).sum().backward()
    assert all(p.grad is not None for p in var_train.parameters() if p.requires_grad)


# ---------------------------------------------------------------- sampling
def _sample(var, vqvae, method: SamplingMethod | None, seeds=(11, 12, 13)):
    labels = torch.tensor([0, 3, 4])
    return generate(var, vqvae, labels, SamplingConfig(cfg=1.5, top_k=10, top_p=0.9), TokenRNG.per_image(seeds),
                    method=method, record_logits=True)


@pytest.mark.parametrize("plan_kind", ["subnet", "per_token"])
def test_cached_sampling_equals_teacher_forcing(var, vqvae, plan_kind):
    if plan_kind == "subnet":
        plan = DepthPlan.subnet(var.depth, PATCH_NUMS, 2, (0, 3, 5))
        tf_plan = plan
    else:
        plan = _random_token_plan(var, 3, seed=9)
        # the sampler applies each image's mask to both CFG halves
        tf_plan = DepthPlan(var.depth, PATCH_NUMS, [
            s if s.token_mask_BDl is None else ScalePlan(token_mask_BDl=s.token_mask_BDl.repeat(2, 1, 1))
            for s in plan.scales])
    out = _sample(var, vqvae, StaticPlanMethod(plan))
    x_in = vqvae.quantize.idxBl_to_var_input(out.idx_Bl)
    labels = torch.tensor([0, 3, 4])
    labels_2B = torch.cat((labels, torch.full_like(labels, var.num_classes)))
    with torch.no_grad():
        teacher = var(labels_2B, x_in.repeat(2, 1, 1), tf_plan)
    cached = torch.cat(out.raw_logits, dim=1)
    torch.testing.assert_close(cached, teacher, atol=1e-4, rtol=1e-4)


def test_full_plan_sampling_equals_default(var, vqvae):
    a = _sample(var, vqvae, None)
    b = _sample(var, vqvae, StaticPlanMethod(DepthPlan.full(var.depth, PATCH_NUMS)))
    assert all(torch.equal(x, y) for x, y in zip(a.idx_Bl, b.idx_Bl, strict=True))
    assert torch.equal(a.images_B3HW, b.images_B3HW)


def _equal_count_plans(var: VAR, B: int, seed: int, from_scale: int = 2) -> tuple[DepthPlan, DepthPlan]:
    """The same per-token masks, in which every image runs n_b tokens of block b (random tokens per image), without
    and with their `token_counts`."""
    g = torch.Generator().manual_seed(seed)
    plain, counted = [], []
    for k, pn in enumerate(PATCH_NUMS):
        if k < from_scale:
            plain.append(ScalePlan())
            counted.append(ScalePlan())
            continue
        counts = tuple(int(n) for n in torch.randint(0, pn * pn + 1, (var.depth,), generator=g))
        mask = torch.zeros(B, var.depth, pn * pn, dtype=torch.bool)
        for i in range(B):
            for b, n in enumerate(counts):
                mask[i, b, torch.randperm(pn * pn, generator=g)[:n]] = True
        plain.append(ScalePlan(token_mask_BDl=mask))
        counted.append(ScalePlan(token_mask_BDl=mask, token_counts=counts))
    return DepthPlan(var.depth, PATCH_NUMS, plain), DepthPlan(var.depth, PATCH_NUMS, counted)


def test_token_counts_spare_the_host_reads_and_change_nothing(var, vqvae):
    """With the per-block counts in the plan the model gathers without reading the mask back; outputs are equal."""
    plain, counted = _equal_count_plans(var, 3, seed=4)
    with HostSyncCounter() as reads_plain:
        a = _sample(var, vqvae, StaticPlanMethod(plain))
    with HostSyncCounter() as reads_counted:
        b = _sample(var, vqvae, StaticPlanMethod(counted))
    assert reads_plain.calls["Tensor.tolist"] == len(PATCH_NUMS) - 2  # one per masked scale
    assert reads_counted.count == 0
    assert all(torch.equal(x, y) for x, y in zip(a.idx_Bl, b.idx_Bl, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a.raw_logits, b.raw_logits, strict=True))
    assert torch.equal(a.images_B3HW, b.images_B3HW) and a.kv_cache_bytes == b.kv_cache_bytes


def test_token_counts_must_fit_the_mask():
    with pytest.raises(ValueError, match="token_counts needs a token mask"):
        ScalePlan(token_counts=(1, 2))
    with pytest.raises(ValueError, match="one count per block"):
        ScalePlan(token_mask_BDl=torch.ones(1, 3, 4, dtype=torch.bool), token_counts=(4, 4))
