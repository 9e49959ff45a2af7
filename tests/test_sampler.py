"""Sampler semantics: filtering rules, guidance ramp, per-image seeds, presets."""

from __future__ import annotations

import math

import pytest
import torch

from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.filtering import top_k_top_p_filter_
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import generate


def test_top_k_keeps_ties_at_threshold():
    logits = torch.tensor([[[3.0, 1.0, 2.0, 2.0, 0.0]]])
    out = top_k_top_p_filter_(logits.clone(), top_k=2, top_p=0.0)
    assert torch.equal(torch.isfinite(out), torch.tensor([[[True, False, True, True, False]]]))


def test_top_p_closed_form():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().view(1, 1, 4)
    # ascending cumulative: 0.05, 0.20, 0.50, 1.0; with top_p = 0.8 remove cumsum <= 0.2 -> the two smallest
    out = top_k_top_p_filter_(logits.clone(), top_k=0, top_p=0.8)
    assert torch.equal(torch.isfinite(out), torch.tensor([[[True, True, False, False]]]))
    # the arg-max always survives, even for tiny top_p
    out = top_k_top_p_filter_(logits.clone(), top_k=0, top_p=1e-6)
    assert torch.equal(torch.isfinite(out), torch.tensor([[[True, False, False, False]]]))


def test_presets():
    assert SamplingConfig.official() == SamplingConfig(cfg=1.5, top_k=900, top_p=0.96)
    code = SamplingConfig.code()
    assert code.top_k == 600 and code.temperature_at(6) == 1.1 and code.temperature_at(7) == 1.0
    with pytest.raises(ValueError, match="unknown sampling protocol"):
        SamplingConfig.preset("fast")
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    var = VAR(VARConfig.for_depth(2, embed_dim=64, num_heads=2, patch_nums=(1, 2, 3, 4), num_classes=5,
                                  vocab_size=32, z_channels=8, drop_path_rate=0.0))
    with torch.no_grad():
        for p in var.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    vqvae = VQVAE(VQVAEConfig(vocab_size=32, z_channels=8, ch=32, patch_nums=(1, 2, 3, 4))).freeze()
    return var.eval(), vqvae


def test_guidance_ramp(models):
    var, vqvae = models
    out = generate(var, vqvae, torch.tensor([1, 2]), SamplingConfig(cfg=3.0, top_k=0, top_p=0.0),
                   TokenRNG.shared_seed(0), record_logits=True)
    K = len(var.patch_nums)
    for k, (raw, guided) in enumerate(zip(out.raw_logits, out.guided_logits, strict=True)):
        t = 3.0 * k / (K - 1)
        torch.testing.assert_close(guided, (1 + t) * raw[:2] - t * raw[2:])


def test_per_image_seeds_do_not_depend_on_batch_composition(models):
    var, vqvae = models
    sampling = SamplingConfig(cfg=1.5, top_k=10, top_p=0.9)
    labels, seeds = torch.tensor([0, 1, 2, 3]), [100, 101, 102, 103]
    together = generate(var, vqvae, labels, sampling, TokenRNG.per_image(seeds))
    for i in range(4):
        alone = generate(var, vqvae, labels[i:i + 1], sampling, TokenRNG.per_image(seeds[i:i + 1]))
        for k in range(len(var.patch_nums)):
            assert torch.equal(alone.idx_Bl[k][0], together.idx_Bl[k][i]), (i, k)
        torch.testing.assert_close(alone.images_B3HW[0], together.images_B3HW[i], atol=1e-5, rtol=0)


def test_single_image_per_image_seed_equals_official_g_seed(models):
    var, vqvae = models
    sampling = SamplingConfig(cfg=1.5, top_k=10, top_p=0.9)
    a = generate(var, vqvae, torch.tensor([4]), sampling, TokenRNG.per_image([7]))
    b = generate(var, vqvae, torch.tensor([4]), sampling, TokenRNG.shared_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a.idx_Bl, b.idx_Bl, strict=True))


def test_temperature_sharpens(models):
    var, vqvae = models
    hot = SamplingConfig(cfg=0.0, top_k=0, top_p=0.0, temperature=(1e3,) * 4)
    out = generate(var, vqvae, torch.zeros(64, dtype=torch.long), hot, TokenRNG.shared_seed(1))
    # at a huge temperature the last scale's draws are close to uniform over the 32 codes
    counts = torch.bincount(out.idx_Bl[-1].flatten(), minlength=32).float()
    assert counts.min() > 0 and counts.max() / counts.mean() < 2.0


def test_flops_and_kv_bytes_reported(models):
    var, vqvae = models
    out = generate(var, vqvae, torch.tensor([0, 1]), SamplingConfig(top_k=5, top_p=0.0), TokenRNG.shared_seed(0))
    assert out.flops > 0
    # full plan: each block caches every token of both CFG halves, k and v, float32
    expected = var.depth * 2 * (2 * 2) * var.L * var.C * 4
    assert out.kv_cache_bytes == expected
    assert math.isfinite(out.images_B3HW.sum().item())


def _probs(B: int, l: int, V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, l, V, generator=g) * 3
    logits[torch.rand(B, l, V, generator=g) < 0.5] = float("-inf")  # filtered entries: probability exactly 0
    logits[..., 0] = 0.0  # every row keeps one finite logit
    return logits.softmax(-1)


@pytest.mark.parametrize("seed", range(5))
def test_token_draws_are_torch_multinomial_draws(seed):
    """Both modes give the tokens of torch.multinomial(p, 1, replacement=True) and leave the generators in the same
    state (the official sampler's draw; per image: one call per image, as the sampler made before)."""
    B, l, V = 3, 7, 257
    probs = _probs(B, l, V, seed)
    shared, reference = TokenRNG.shared_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(2):  # consecutive draws stay in step
        drawn = shared.multinomial(probs)
        expected = torch.multinomial(probs.reshape(-1, V), 1, replacement=True, generator=reference).view(B, l)
        assert torch.equal(drawn, expected)
    assert torch.equal(shared.generators[0].get_state(), reference.get_state())
    seeds = [seed * 10 + i for i in range(B)]
    per_image, references = TokenRNG.per_image(seeds), [torch.Generator().manual_seed(s) for s in seeds]
    for _ in range(2):
        drawn = per_image.multinomial(probs)
        expected = torch.stack([torch.multinomial(probs[i], 1, replacement=True, generator=g).view(l)
                                for i, g in enumerate(references)])
        assert torch.equal(drawn, expected)
    assert all(torch.equal(a.get_state(), b.get_state())
               for a, b in zip(per_image.generators, references, strict=True))


def test_gumbel_noise_is_the_official_formula():
    like = torch.empty(2, 3, 5)
    seeds = [4, 9]
    drawn = TokenRNG.per_image(seeds).gumbel(like)
    expected = torch.stack([-torch.empty(3, 5).exponential_(generator=torch.Generator().manual_seed(s)).log()
                            for s in seeds])
    assert torch.equal(drawn, expected)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(TokenRNG.shared_seed(3).gumbel(like), -torch.empty(2, 3, 5).exponential_(generator=g).log())


def test_per_image_draws_cost_one_random_call_per_image_and_a_constant_rest():
    """Per image only the Exp(1) noise needs image i's generator; division, argmax and the check run once."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    def ops(batch: int) -> list[str]:
        rng, probs = TokenRNG.per_image(range(batch)), _probs(batch, 4, 16, 0)
        with Ops() as mode:
            rng.multinomial(probs)
        return [n for n in mode.names if n not in ("aten::select",)]  # views launch nothing

    small, large = ops(2), ops(9)
    assert small.count("aten::exponential_") == 2 and large.count("aten::exponential_") == 9
    assert [n for n in small if n != "aten::exponential_"] == [n for n in large if n != "aten::exponential_"]
    assert "aten::multinomial" not in large and "aten::stack" not in large


def test_invalid_probabilities_are_refused():
    probs = _probs(1, 2, 8, 0)
    probs[0, 1, 3] = float("nan")
    with pytest.raises(RuntimeError, match="probability tensor contains"):
        TokenRNG.per_image([0]).multinomial(probs)
