"""CoDe with two tiny models: the hand-over limits, cached prefill = teacher forcing, FLOPs, budget, KV sizing."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tiny_var, tiny_vqvae

from varianttrain.methods.budget import DepthBudget
from varianttrain.methods.code import CoDeMethod, build_code, code_flops, matched_draft_scales
from varianttrain.methods.spec import MethodOptions
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import generate

PATCH_NUMS = (1, 2, 3, 4)
LABELS = torch.tensor([0, 3, 4])
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def drafter():
    return random_tiny_var(6, PATCH_NUMS, vocab_size=32, seed=0)


@pytest.fixture(scope="module")
def refiner():
    return random_tiny_var(2, PATCH_NUMS, vocab_size=32, seed=5)


@pytest.fixture(scope="module")
def vqvae():
    return tiny_vqvae(PATCH_NUMS, vocab_size=32, seed=1)


def _sample(var, vqvae, method=None):
    return generate(var, vqvae, LABELS, SamplingConfig(cfg=1.5, top_k=10, top_p=0.9), TokenRNG.per_image(SEEDS),
                    method=method, record_logits=True)


def _same(a, b) -> None:
    assert all(torch.equal(x, y) for x, y in zip(a.idx_Bl, b.idx_Bl, strict=True))
    assert torch.equal(a.images_B3HW, b.images_B3HW)


def test_drafting_every_scale_is_the_drafter_alone(drafter, refiner, vqvae):
    code = _sample(drafter, vqvae, CoDeMethod(drafter, refiner, len(PATCH_NUMS)))
    _same(code, _sample(drafter, vqvae))
    assert code.flops == _sample(drafter, vqvae).flops
    assert len(code.kv_cache_bytes_by_model) == 1


def test_drafting_no_scale_is_the_refiner_alone(drafter, refiner, vqvae):
    code = _sample(drafter, vqvae, CoDeMethod(drafter, refiner, 0))
    alone = _sample(refiner, vqvae)
    _same(code, alone)
    assert code.flops == alone.flops


@pytest.mark.parametrize("draft", [1, 2, 3])
def test_cached_prefill_equals_teacher_forcing_of_the_refiner(drafter, refiner, vqvae, draft):
    out = _sample(drafter, vqvae, CoDeMethod(drafter, refiner, draft))
    x_in = vqvae.quantize.idxBl_to_var_input(out.idx_Bl)
    labels_2B = torch.cat((LABELS, torch.full_like(LABELS, refiner.num_classes)))
    with torch.no_grad():
        teacher_refiner = refiner(labels_2B, x_in.repeat(2, 1, 1))
        teacher_drafter = drafter(labels_2B, x_in.repeat(2, 1, 1))
    begin = sum(p * p for p in PATCH_NUMS[:draft])
    cached_refiner = torch.cat(out.raw_logits[draft:], dim=1)
    cached_drafter = torch.cat(out.raw_logits[:draft], dim=1)
    torch.testing.assert_close(cached_refiner, teacher_refiner[:, begin:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cached_drafter, teacher_drafter[:, :begin], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("draft", range(len(PATCH_NUMS) + 1))
def test_counted_flops_equal_the_closed_form(drafter, refiner, vqvae, draft):
    out = _sample(drafter, vqvae, CoDeMethod(drafter, refiner, draft))
    assert out.flops == len(LABELS) * code_flops(drafter, refiner, draft).total  # the closed form is per image


def test_more_drafted_scales_cost_more_and_the_budget_picks_the_closest(drafter, refiner):
    costs = [code_flops(drafter, refiner, n).total for n in range(len(PATCH_NUMS) + 1)]
    assert costs == sorted(costs)
    target = (costs[1] + 3 * costs[2]) // 4  # nearer to N = 2
    assert matched_draft_scales(drafter, refiner, target) == 2
    assert matched_draft_scales(drafter, refiner, 0) == 0
    assert matched_draft_scales(drafter, refiner, 10 * costs[-1]) == len(PATCH_NUMS)


def test_factory_matches_the_budget_and_reports_it(drafter, refiner):
    budget = DepthBudget(drafter.depth, PATCH_NUMS, depth=2, bridge_scales=2)
    method = build_code(drafter, MethodOptions(budget=budget, refiner=refiner))
    target = budget.variant_flops(drafter).total
    chosen = code_flops(drafter, refiner, method.draft_scales).total
    assert all(abs(chosen - target) <= abs(code_flops(drafter, refiner, n).total - target)
               for n in range(len(PATCH_NUMS) + 1))
    assert method.budget_match.flops.total == chosen and "refiner" in method.budget_match.note
    explicit = build_code(drafter, MethodOptions(budget=budget, refiner=refiner, knobs={"draft_scales": 3}))
    assert explicit.draft_scales == 3 and "not budget-matched" in explicit.budget_match.note


def test_missing_or_foreign_refiner_is_refused(drafter):
    budget = DepthBudget(drafter.depth, PATCH_NUMS, depth=2, bridge_scales=2)
    with pytest.raises(ValueError, match="needs a refiner model.*download var_d16"):
        build_code(drafter, MethodOptions(budget=budget))
    other = random_tiny_var(2, PATCH_NUMS, vocab_size=16, seed=3)
    with pytest.raises(ValueError, match="vocabulary 32 vs 16"):
        build_code(drafter, MethodOptions(budget=budget, refiner=other))


def test_drafter_caches_hold_only_the_drafted_scales(drafter, refiner, vqvae):
    draft = 2
    out = _sample(drafter, vqvae, CoDeMethod(drafter, refiner, draft))
    drafter_bytes, refiner_bytes = out.kv_cache_bytes_by_model
    prefix, total = sum(p * p for p in PATCH_NUMS[:draft]), sum(p * p for p in PATCH_NUMS)
    per_token_drafter = 2 * 2 * len(LABELS) * drafter.C * 4 * drafter.depth  # k and v, 2 CFG rows, float32
    assert drafter_bytes == per_token_drafter * prefix
    assert refiner_bytes == 2 * 2 * len(LABELS) * refiner.C * 4 * refiner.depth * total
    assert out.kv_cache_bytes == max(drafter_bytes, refiner_bytes)
