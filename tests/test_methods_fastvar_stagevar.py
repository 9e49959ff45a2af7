"""FastVAR and StageVAR on the one sampler: identities with the full model, restoration rules, FLOP and KV accounting.

A tiny VAR with strongly randomised weights (far from the identity blocks of the official init).
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_tiny_var, tiny_vqvae

from varianttrain.methods.budget import DepthBudget
from varianttrain.methods.common import upsample_tokens
from varianttrain.methods.fastvar import FastVARMethod, default_block_range, keep_count
from varianttrain.methods.registry import available_methods, build_method
from varianttrain.methods.spec import MethodOptions
from varianttrain.methods.stagevar import StageVARMethod, projection_energy, stage_start
from varianttrain.models.depth_plan import FULL_SCALE, ScalePlan
from varianttrain.models.var import VAR
from varianttrain.models.vqvae import VQVAE
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, generate

PATCH_NUMS = (1, 2, 3, 4, 5, 6)
K = len(PATCH_NUMS)
DEPTH = 6
BRIDGE = 3
SAMPLING = SamplingConfig(cfg=1.5, top_k=10, top_p=0.9)
LABELS = torch.tensor([2, 0, 4])
SEEDS = [5, 6, 7]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny matmuls: threads only contend on the shared CI cores (restored by conftest)


@pytest.fixture(scope="module")
def var() -> VAR:
    return random_tiny_var(DEPTH, PATCH_NUMS, vocab_size=48, seed=3)


@pytest.fixture(scope="module")
def vqvae() -> VQVAE:
    return tiny_vqvae(PATCH_NUMS, vocab_size=48, seed=4)


def _run(var, vqvae, method=None, decode: bool = True):
    return generate(var, vqvae, LABELS, SAMPLING, TokenRNG.per_image(SEEDS), method=method, decode=decode)


@pytest.fixture(scope="module")
def full(var, vqvae):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the tests (module fixtures run before the autouse one)
    try:
        return _run(var, vqvae)
    finally:
        torch.set_num_threads(threads)


def _build(name: str, var, depth: int = 2, **knobs):
    budget = DepthBudget(DEPTH, PATCH_NUMS, depth, bridge_scales=BRIDGE)
    return build_method(name, var, MethodOptions(budget=budget, knobs=knobs))


def _assert_same_samples(a, b) -> None:
    for k, (x, y) in enumerate(zip(a.idx_Bl, b.idx_Bl, strict=True)):
        assert torch.equal(x, y), f"tokens differ at scale {k}"
    assert torch.equal(a.f_hat_BCvhw, b.f_hat_BCvhw)
    if a.images_B3HW is not None and b.images_B3HW is not None:
        assert torch.equal(a.images_B3HW, b.images_B3HW)


def test_registered():
    assert {"fastvar", "stagevar"} <= set(available_methods())


# ----------------------------------------------------------------------------------------------------------- FastVAR
def test_fastvar_zero_pruning_equals_full(var, vqvae, full):
    method = _build("fastvar", var, prune_ratios=0.0)
    assert not method.keep
    _assert_same_samples(_run(var, vqvae, method), full)


def test_fastvar_full_budget_equals_full(var, vqvae, full):
    method = _build("fastvar", var, depth=DEPTH)
    out = _run(var, vqvae, method)
    _assert_same_samples(out, full)
    assert method.budget_match.flop_ratio == 1.0 and out.flops == full.flops


class _FastCapture(FastVARMethod):
    seen: list

    @property
    def block_hook(self):  # also at the last pruned scale, where FastVAR records nothing (skip_fill did the work)
        return self._hook if self._k in self.keep else super().block_hook

    def _hook(self, block, x_in, x_out, ran_Bl):
        y = super()._hook(block, x_in, x_out, ran_Bl)
        if self._k in self.keep:
            self.seen.append((self._k, block, x_in, x_out, ran_Bl, y, self._cache.get(block)))
        return y


def test_fastvar_pruned_tokens_take_the_cached_block_change(var, vqvae):
    base = _build("fastvar", var, prune_ratios=0.5)
    assert base.cache_scale == BRIDGE - 1 and set(base.keep) == {3, 4, 5}
    method = _FastCapture(var, base.keep, base.cache_scale, base.block_range)
    method.seen = []
    _run(var, vqvae, method, decode=False)
    lo, hi = base.block_range
    cache_pn = PATCH_NUMS[base.cache_scale]
    checked = 0
    for k, block, x_in, x_out, ran, y, cached in method.seen:
        if not lo <= block <= hi:
            assert ran is None and y is x_out  # blocks outside the range run every token untouched
            continue
        n = PATCH_NUMS[k] ** 2
        assert ran.shape == (2 * len(LABELS), n)
        assert bool((ran.sum(1) == keep_count(n, 0.5)).all())
        assert torch.equal(ran[:len(LABELS)], ran[len(LABELS):])  # CFG rows share the keep set
        fill = upsample_tokens(cached, (cache_pn, cache_pn), (PATCH_NUMS[k],) * 2, "area")
        torch.testing.assert_close(y[~ran], (x_in + fill)[~ran], rtol=0, atol=0)
        torch.testing.assert_close(y[ran], x_out[ran], rtol=0, atol=0)
        checked += 1
    assert checked == 3 * (hi - lo + 1)


def test_fastvar_flops_kv_and_rng_parity(var, vqvae, full):
    flops = []
    for depth in (DEPTH, 4, 3):
        method = _build("fastvar", var, depth=depth)
        out = _run(var, vqvae, method, decode=False)
        assert out.flops == len(LABELS) * method.expected_flops(var).total
        assert [x.shape for x in out.idx_Bl] == [x.shape for x in full.idx_Bl]
        flops.append(out.flops)
        if depth < DEPTH:
            assert out.kv_cache_bytes < full.kv_cache_bytes
            assert abs(method.budget_match.flop_ratio - 1) < 0.08  # one common ratio, tiny-model granularity
    assert flops == sorted(flops, reverse=True) and flops[-1] < flops[0] == full.flops


def test_fastvar_infeasible_budget_prunes_everything(var, vqvae):
    """Below the floor of the always-run blocks the ratio saturates at 1 and budget_match says so (ratio, note)."""
    method = _build("fastvar", var, depth=1)
    assert set(method.keep.values()) == {0} and method.budget_match.flop_ratio > 1
    assert "out of reach" in method.budget_match.note
    out = _run(var, vqvae, method, decode=False)
    assert out.flops == len(LABELS) * method.expected_flops(var).total


def test_fastvar_knob_checks(var):
    assert default_block_range(30) == (3, 27)
    with pytest.raises(ValueError, match="prune_ratios"):
        _build("fastvar", var, prune_ratios=[0.5])
    with pytest.raises(ValueError, match="cache_scale"):
        _build("fastvar", var, prune_ratios=0.5, cache_scale=4)
    with pytest.raises(ValueError, match="block_range"):
        _build("fastvar", var, block_range=(2, DEPTH))


# ---------------------------------------------------------------------------------------------------------- StageVAR
def test_stagevar_no_refinement_equals_full(var, vqvae, full):
    method = _build("stagevar", var, refine_from=K, ranks=[])
    _assert_same_samples(_run(var, vqvae, method), full)
    full_budget = _build("stagevar", var, depth=DEPTH)
    assert full_budget.refine_from == K and full_budget.budget_match.flop_ratio == 1.0
    _assert_same_samples(_run(var, vqvae, full_budget), full)


class _DropGuidance(SamplingMethod):
    def __init__(self, start: int):
        self.start = start

    def scale_plan(self, scale: int) -> ScalePlan:
        return FULL_SCALE if scale < self.start else ScalePlan(guidance=False)


def test_stagevar_full_rank_only_drops_the_guidance_branch(var, vqvae):
    start = 4
    method = _build("stagevar", var, refine_from=start, rank_fraction=1.0)
    reference = _run(var, vqvae, _DropGuidance(start), decode=False)
    out = _run(var, vqvae, method, decode=False)
    _assert_same_samples(out, reference)
    assert out.flops == reference.flops == len(LABELS) * method.expected_flops(var).total


class _StageCapture(StageVARMethod):
    seen: list

    def before_head(self, scale, x_BlC):
        prev = None if self.representative is None else self._upsampled_prev(scale)
        y = super().before_head(scale, x_BlC)
        if self.representative is not None:
            self.seen.append((scale, x_BlC, y, self.representative, prev))
        return y


def test_stagevar_restores_non_representative_tokens(var, vqvae, full):
    ranks = [5, 9, 12]
    method = _StageCapture(var, refine_from=3, ranks=ranks)
    method.seen = []
    out = _run(var, vqvae, method, decode=False)
    assert [x.shape for x in out.idx_Bl] == [x.shape for x in full.idx_Bl]  # RNG parity
    assert [s[0] for s in method.seen] == [3, 4, 5]
    for (_, x, y, rep, prev), r in zip(method.seen, ranks, strict=True):
        assert x.shape[0] == len(LABELS)  # one branch
        assert bool((rep.sum(1) == r).all())
        torch.testing.assert_close(y[rep], x[rep], rtol=0, atol=0)
        torch.testing.assert_close(y[~rep], prev[~rep], rtol=0, atol=0)
    assert out.kv_cache_bytes < full.kv_cache_bytes


def test_stagevar_budget_flops(var, vqvae, full):
    flops = []
    for depth in (DEPTH, 4, 2, 1):
        method = _build("stagevar", var, depth=depth)
        out = _run(var, vqvae, method, decode=False)
        assert out.flops == len(LABELS) * method.expected_flops(var).total
        if depth < DEPTH:
            assert abs(method.budget_match.flop_ratio - 1) < 0.03
        flops.append(out.flops)
    assert flops[0] == full.flops
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == len(flops)


def test_stagevar_stage_start_and_branch_knob(var):
    assert stage_start((1, 2, 3, 4, 5, 6, 8, 10, 13, 16)) == 7
    assert stage_start(PATCH_NUMS) == 3
    with pytest.raises(ValueError, match="uncond"):
        _build("stagevar", var, branch="both")


@pytest.mark.parametrize("branch", ["cond", "uncond"])
def test_stagevar_single_branch_logits_are_that_branchs_logits(var, vqvae, branch):
    """With every token kept, a refinement scale's logits are exactly the kept branch's teacher-forcing logits."""
    K = len(PATCH_NUMS)
    refine_from = K - 2
    ranks = [pn * pn for pn in PATCH_NUMS[refine_from:]]
    method = StageVARMethod(var, refine_from, ranks, branch=branch)
    out = generate(var, vqvae, LABELS, SAMPLING, TokenRNG.per_image(SEEDS), method=method, record_logits=True)
    labels = LABELS if branch == "cond" else torch.full_like(LABELS, var.num_classes)
    with torch.no_grad():
        teacher = var(labels, vqvae.quantize.idxBl_to_var_input(out.idx_Bl))
    begin = sum(pn * pn for pn in PATCH_NUMS[:refine_from])
    cached = torch.cat(out.guided_logits[refine_from:], dim=1)
    torch.testing.assert_close(cached, teacher[:, begin:], atol=1e-4, rtol=1e-4)
    assert out.raw_logits[-1].shape[0] == len(LABELS)  # one branch only
    # the closed form counts what ran, the null-class row's recomputed AdaLN modulations included
    assert out.flops == len(LABELS) * method.expected_flops(var).total


def test_projection_energy_full_rank_is_the_centred_norm():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 9, 5, generator=g)
    energy = projection_energy(features, torch.randn(9, 9, generator=g))  # invertible sketch: whole row space
    centred = features - features.mean(1, keepdim=True)
    torch.testing.assert_close(energy, centred.square().sum(-1), rtol=1e-4, atol=1e-5)
    low = projection_energy(features, torch.randn(2, 9, generator=g))
    assert bool((low <= energy + 1e-5).all())  # a rank-2 sketch captures part of each token's energy


# ------------------------------------------------------------------------------------------------------ all three
@pytest.mark.parametrize("name", ["depthvar", "fastvar", "stagevar"])
@pytest.mark.parametrize("bridge", [0, K])
def test_budget_edges(var, vqvae, full, name, bridge):
    """Bridge N = K leaves no flexible zone (the budget is the full model); N = 0 still builds and is counted."""
    budget = DepthBudget(DEPTH, PATCH_NUMS, 2, bridge_scales=bridge)
    method = build_method(name, var, MethodOptions(budget=budget))
    out = _run(var, vqvae, method, decode=False)
    assert out.flops == len(LABELS) * method.expected_flops(var).total
    if bridge == K:
        assert method.budget_match.flop_ratio == 1.0 and out.flops == full.flops
    else:
        assert out.flops < full.flops
