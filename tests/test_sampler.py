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
