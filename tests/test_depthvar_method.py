"""DepthVAR through the sampler hooks: DepthVAR checks 6, 7, 9, 10, the S ≡ 1 invariant, FLOP and KV accounting.

The checks and steps (DVn) are those of docs/METHODS.md. A tiny VAR with strongly randomised weights (far from the
identity blocks of the official init) makes every comparison meaningful.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import random_tiny_var, tiny_vqvae

from varianttrain.methods.budget import DepthBudget
from varianttrain.methods.common import capacity_plan, counted_flops, upsample_tokens
from varianttrain.methods.depthvar import DepthVARMethod, default_layer_range
from varianttrain.methods.depthvar_schedule import DepthVARConfig, layer_positions
from varianttrain.methods.registry import available_methods, build_method
from varianttrain.methods.spec import MethodOptions
from varianttrain.models.depth_plan import ScalePlan
from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import generate

PATCH_NUMS = (1, 2, 3, 4, 5, 6)
DEPTH = 6
BRIDGE = 3  # R = 2 under --depth: scales 3, 4, 5 (4x4, 5x5, 6x6) are accelerated
SAMPLING = SamplingConfig(cfg=1.5, top_k=10, top_p=0.9)
LABELS = torch.tensor([0, 3, 1])
SEEDS = [11, 12, 13]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny matmuls: threads only contend on the shared CI cores (restored by conftest)


@pytest.fixture(scope="module")
def var() -> VAR:
    return random_tiny_var(DEPTH, PATCH_NUMS, vocab_size=32, seed=0)


@pytest.fixture(scope="module")
def vqvae() -> VQVAE:
    return tiny_vqvae(PATCH_NUMS, vocab_size=32, seed=1)


@pytest.fixture(scope="module")
def full(var, vqvae):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same kernels as the tests (module fixtures run before the autouse one)
    try:
        return generate(var, vqvae, LABELS, SAMPLING, TokenRNG.per_image(SEEDS))
    finally:
        torch.set_num_threads(threads)


def _build(var, depth: int = 2, **knobs) -> DepthVARMethod:
    budget = DepthBudget(DEPTH, PATCH_NUMS, depth, bridge_scales=BRIDGE)
    return build_method("depthvar", var, MethodOptions(budget=budget, knobs=knobs))


def _run(var, vqvae, method, decode: bool = True):
    return generate(var, vqvae, LABELS, SAMPLING, TokenRNG.per_image(SEEDS), method=method, decode=decode)


def _assert_same_samples(a, b) -> None:
    for k, (x, y) in enumerate(zip(a.idx_Bl, b.idx_Bl, strict=True)):
        assert torch.equal(x, y), f"tokens differ at scale {k}"
    assert torch.equal(a.f_hat_BCvhw, b.f_hat_BCvhw)
    assert torch.equal(a.images_B3HW, b.images_B3HW)


def test_registered():
    assert "depthvar" in available_methods()


def test_unit_score_equals_full(var, vqvae, full):
    """"depthvar with every score 1 equals full": all-ones masks through the gather path (DepthVAR check 6)."""
    method = _build(var, unit_score=True)
    assert method.accelerated == {3, 4, 5}
    out = _run(var, vqvae, method)
    assert method.maps is not None and bool(method.maps.mask.all())  # the masked path really ran
    _assert_same_samples(out, full)
    assert out.flops == full.flops


@pytest.mark.parametrize("reference_scale", [len(PATCH_NUMS) - 1, len(PATCH_NUMS) + 2])
def test_no_accelerated_scale_reproduces_baseline(var, vqvae, full, reference_scale):
    """DepthVAR check 7: R >= K-1 gives the baseline images exactly for fixed seeds."""
    method = _build(var, reference_scale=reference_scale)
    assert not method.accelerated
    _assert_same_samples(_run(var, vqvae, method), full)


def test_full_budget_is_the_full_model(var, vqvae, full):
    method = _build(var, depth=DEPTH)
    assert not method.accelerated and method.budget_match.flop_ratio == 1.0
    out = _run(var, vqvae, method)
    _assert_same_samples(out, full)
    assert out.flops == full.flops and out.kv_cache_bytes == full.kv_cache_bytes


def test_rng_parity_and_bridge_untouched(var, vqvae, full):
    """DepthVAR check 10: every token of every scale is sampled; scales <= R are the baseline's exactly."""
    method = _build(var)
    out = _run(var, vqvae, method)
    R = method.config.reference_scale
    assert R == BRIDGE - 1
    for k, (x, y) in enumerate(zip(out.idx_Bl, full.idx_Bl, strict=True)):
        assert x.shape == y.shape
        if k <= R:
            assert torch.equal(x, y)
    assert not torch.equal(out.images_B3HW, full.images_B3HW)


class _ZeroBlock(DepthVARMethod):
    """Forces one block's mask to all-False at one scale and records what the hook and the KV cache saw."""

    def __init__(self, *args, block: int, scale: int, caches: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_block, self.zero_scale, self.caches = block, scale, caches
        self.seen: dict = {}

    def scale_plan(self, scale: int) -> ScalePlan:
        plan = super().scale_plan(scale)
        if scale == self.zero_scale:
            mask = plan.token_mask_BDl.clone()
            mask[:, self.zero_block] = False
            self.maps = replace(self.maps, mask=mask)
            self.seen["kv_before"] = self.caches[self.zero_block].length
            self.seen["delta_prev"] = self.deltas_prev[self.zero_block]
            plan = ScalePlan(token_mask_BDl=mask)
        return plan

    def _hook(self, block, x_in, x_out, ran_Bl):
        y = super()._hook(block, x_in, x_out, ran_Bl)
        if self._k == self.zero_scale and block == self.zero_block:
            self.seen.update(x_in=x_in, y=y, ran=ran_Bl, kv_after=self.caches[block].length)
        return y


def test_zero_block_mask_gives_proxy_and_no_kv(var, vqvae, monkeypatch):
    """DepthVAR check 6: a block with an all-zeros mask outputs x + up(Δ_prev) and its KV cache does not grow."""
    caches: list = []
    original = var.new_kv_caches

    def capture(plan=None):
        caches[:] = original(plan)
        return caches

    monkeypatch.setattr(var, "new_kv_caches", capture)
    config = _build(var).config
    block, scale = 0, BRIDGE  # block 0 normally serves every token with d >= 1
    method = _ZeroBlock(var, config, block=block, scale=scale, caches=caches)
    _run(var, vqvae, method, decode=False)
    seen = method.seen
    assert seen["ran"] is not None and not bool(seen["ran"].any())
    assert seen["kv_after"] == seen["kv_before"]
    prev, pn = PATCH_NUMS[scale - 1], PATCH_NUMS[scale]
    expected = seen["x_in"] + upsample_tokens(seen["delta_prev"], (prev, prev), (pn, pn), "bilinear")
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=0)


def test_never_run_block_keeps_bridge_kv_only(var, vqvae, monkeypatch):
    """With the sigmoid schedule d <= L-1, so the last block of the bit-reversal order never runs (DV9)."""
    caches: list = []
    original = var.new_kv_caches
    monkeypatch.setattr(var, "new_kv_caches", lambda plan=None: caches.extend(original(plan)) or caches)
    method = _build(var)
    _run(var, vqvae, method, decode=False)
    last = max(range(DEPTH), key=lambda b: layer_positions(DEPTH)[b])
    assert all(counts[last] == 0 for counts in method.token_counts() if counts is not None)
    assert caches[last].length == sum(pn * pn for pn in PATCH_NUMS[:BRIDGE])


def test_counted_flops_match_closed_form_and_drop_with_budget(var, vqvae, full):
    flops = []
    for depth in (DEPTH, 4, 2, 1):
        method = _build(var, depth=depth)
        out = _run(var, vqvae, method, decode=False)
        assert out.flops == len(LABELS) * method.expected_flops(var).total
        target = DepthBudget(DEPTH, PATCH_NUMS, depth, bridge_scales=BRIDGE).variant_flops(var).total
        assert abs(out.flops / len(LABELS) / target - 1) < 0.06  # token-layer matching, tiny-model granularity
        flops.append(out.flops)
    assert flops[0] == full.flops
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == len(flops)


def test_flop_matching_mode(var):
    by_tokens = _build(var)
    by_flops = _build(var, budget_match="flops")
    assert abs(by_flops.budget_match.flop_ratio - 1) <= abs(by_tokens.budget_match.flop_ratio - 1)


def test_kv_cache_bytes_drop_and_capacity_is_exact(var, vqvae, full, monkeypatch):
    caches: list = []
    original = var.new_kv_caches
    monkeypatch.setattr(var, "new_kv_caches", lambda plan=None: caches.extend(original(plan)) or caches)
    out = _run(var, vqvae, _build(var), decode=False)
    assert 0 < out.kv_cache_bytes < full.kv_cache_bytes
    assert all(c.length == c.capacity for c in caches)  # the static capacity plan matches what ran, no growth


def test_restoration_copies_anchor_states_into_d0_tokens(var, vqvae):
    """DepthVAR check 9 in the sampler: only d = 0 tokens change, always to an anchor with d >= 1."""

    class Capture(DepthVARMethod):
        records: list = []

        def before_head(self, scale, x_BlC):
            y = super().before_head(scale, x_BlC)
            if self.maps is not None:
                self.records.append((x_BlC, y, self.maps.depth.flatten(1), self._source))
            return y

    config = replace(_build(var).config, restore_threshold=-1.0)  # every admissible anchor passes
    method = Capture(var, config)
    _run(var, vqvae, method, decode=False)
    assert len(method.records) == 3
    restored_any = False
    for x, y, depth, source in method.records:
        tokens = torch.arange(depth.shape[1]).expand_as(source)
        restored = source != tokens
        restored_any |= bool(restored.any())
        assert bool((depth[restored] == 0).all())
        assert bool((depth.gather(1, source)[restored] >= 1).all())
        rows = x.shape[0] // depth.shape[0]
        index = source.repeat(rows, 1)
        torch.testing.assert_close(y, x.gather(1, index[..., None].expand_as(x)), rtol=0, atol=0)
    assert restored_any


def test_code_weights_are_the_scores(var, vqvae):
    method = _build(var)
    _run(var, vqvae, method, decode=False)
    weights = method.code_weights(len(PATCH_NUMS) - 1)
    torch.testing.assert_close(weights, method.maps.score.flatten(1))
    off = _build(var, blending=False)
    _run(var, vqvae, off, decode=False)
    assert off.code_weights(len(PATCH_NUMS) - 1) is None


def test_min_rank_ties_use_padded_gathers(var, vqvae, full):
    out = _run(var, vqvae, _build(var, rank_ties="min", rank_upsample="nearest"), decode=False)
    assert [x.shape for x in out.idx_Bl] == [x.shape for x in full.idx_Bl]


def test_paper_mode_from_the_budget(var):
    budget = DepthBudget(DEPTH, PATCH_NUMS, 2, bridge_scales=BRIDGE, reference_scale=3)
    method = build_method("depthvar", var, MethodOptions(budget=budget))
    assert method.config.reference_scale == 3 and method.config.target_fraction is None
    assert method.accelerated == {4, 5}


@pytest.mark.parametrize("knobs, match", [
    ({"blend_at": "post_phi"}, "post_phi"),
    ({"kv_fill": "proxy"}, "kv_fill"),
    ({"ref_layer_range": (1, DEPTH)}, "ref_layer_range"),
    ({"budget_match": "latency"}, "budget_match"),
    ({"not_a_knob": 1}, "unknown knob"),
])
def test_unsupported_options_raise(var, knobs, match):
    with pytest.raises(ValueError, match=match):
        _build(var, **knobs)


def test_helpers():
    assert default_layer_range(30) == (3, 18)
    assert default_layer_range(DEPTH) == (1, 4)
    plan = capacity_plan(2, (1, 2), [None, [3, 0]])
    assert [round(sum(row[b] for row in plan.tokens_per_block())) for b in range(2)] == [4, 1]
    stub = VAR(VARConfig.for_depth(2, embed_dim=64, num_heads=2, patch_nums=(1, 2), num_classes=2, vocab_size=8,
                                   z_channels=4))
    full = counted_flops(stub, [None, None]).total
    assert counted_flops(stub, [None, [4, 0]]).total < full
    assert DepthVARConfig().ref_layer_range == (3, 18)
