"""Every method draws its random numbers exactly as the full model does, so evaluation comparisons are sample by
sample: with the same per-image seeds, a method draws the same token indices wherever it leaves the logits alone,
and its generators end in the same state as the full model's."""

from __future__ import annotations

import pytest
import torch
from conftest import random_tiny_var, tiny_vqvae

from varianttrain.methods.budget import DepthBudget
from varianttrain.methods.registry import available_methods, build_method
from varianttrain.methods.spec import MethodOptions
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import generate

PATCH_NUMS = (1, 2, 3, 4, 5)
LABELS = torch.tensor([0, 2, 3, 4])
SEEDS = [101, 202, 303, 404]


@pytest.fixture(scope="module")
def models():
    return (random_tiny_var(6, PATCH_NUMS, vocab_size=32, seed=0), random_tiny_var(2, PATCH_NUMS, vocab_size=32,
                                                                                     seed=7),
            tiny_vqvae(PATCH_NUMS, vocab_size=32))


def _sample(var, vqvae, method):
    rng = TokenRNG.per_image(SEEDS)
    out = generate(var, vqvae, LABELS, SamplingConfig(cfg=1.5, top_k=12, top_p=0.9), rng, method=method,
                   decode=False, record_logits=True)
    return out, [g.get_state() for g in rng.generators]


@pytest.mark.parametrize("name", available_methods())
def test_same_seeds_same_draws_wherever_the_method_leaves_the_logits_alone(models, name):
    var, refiner, vqvae = models
    budget = DepthBudget(var.depth, PATCH_NUMS, depth=3, bridge_scales=2, depth_choices=(3,))
    full, full_states = _sample(var, vqvae, None)
    method = build_method(name, var, MethodOptions(budget=budget, refiner=refiner))
    out, states = _sample(var, vqvae, method)
    # The generators end in the same state: the same number of draws in all, whatever the method changed.
    assert all(torch.equal(a, b) for a, b in zip(states, full_states, strict=True))
    same_prefix, untouched = True, 0
    for k in range(len(PATCH_NUMS)):
        equal_logits = torch.equal(out.guided_logits[k], full.guided_logits[k])
        if same_prefix and equal_logits:
            # Same tokens so far and the same distribution here: the draws themselves must agree.
            assert torch.equal(out.idx_Bl[k], full.idx_Bl[k]), f"{name}: scale {k} drew other tokens"
            untouched += 1
        same_prefix = same_prefix and torch.equal(out.idx_Bl[k], full.idx_Bl[k])
    if name in ("full", "variant", "depthvar", "stagevar", "fastvar", "code"):
        assert untouched >= 1, f"{name}: no untouched scale, the check above was vacuous"
    if name != "full":
        assert not all(torch.equal(a, b) for a, b in zip(out.idx_Bl, full.idx_Bl, strict=True)), \
            f"{name} changed nothing: the test would not see a difference"


def test_the_token_generator_state_reveals_one_extra_draw():
    """The generator-state comparison used above (and by every eval run on image 0) sees a single extra draw."""
    a, b = TokenRNG.per_image([5]), TokenRNG.per_image([5])
    probs = torch.full((1, 3, 8), 1 / 8)
    a.multinomial(probs)
    b.multinomial(probs)
    assert torch.equal(a.generators[0].get_state(), b.generators[0].get_state())
    b.multinomial(probs[:, :1])
    assert not torch.equal(a.generators[0].get_state(), b.generators[0].get_state())
