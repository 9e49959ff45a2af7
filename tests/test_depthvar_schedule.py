"""DepthVAR math (docs/METHODS.md, DV2-DV17 and "DepthVAR checks" 1-5 and 9) against reference numbers.

The expected values were computed independently of the code under test (float64 evaluation of the formulas of
DV3-DV9 and DV13, by hand for the 4x4 worked example); the code under test never produced them.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from scipy import integrate

from varianttrain.methods.common import upsample_tokens
from varianttrain.methods.depthvar_schedule import (
    DepthVARConfig,
    anchor_candidates,
    anchor_lines,
    bit_reversal_order,
    budget_for_depth,
    depth_maps,
    depth_scores,
    integer_depths,
    layer_major_mask,
    layer_positions,
    percentiles,
    rank_map,
    rank_tables,
    reference_areas,
    restore_similar,
    scale_constants,
    schedule_value,
    solve_schedule_constant,
    tent,
    upsample_rank_map,
)

L = 30
PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR-d30
PI_30 = [0, 16, 8, 24, 4, 20, 12, 28, 2, 18, 10, 26, 6, 22, 14, 1, 17, 9, 25, 5, 21, 13, 29, 3, 19, 11, 27, 7, 23, 15]
POS_30 = [0, 15, 8, 23, 4, 19, 12, 27, 2, 17, 10, 25, 6, 21, 14, 29, 1, 16, 9, 24, 5, 20, 13, 28, 3, 18, 11, 26, 7, 22]
PI_24 = [0, 16, 8, 4, 20, 12, 2, 18, 10, 6, 22, 14, 1, 17, 9, 5, 21, 13, 3, 19, 11, 7, 23, 15]

# Worked example (DepthVAR check 4): 4x4 rank map (no ties), A = 4/16, 'head' => A' = 0.3125
EX_B = [[0.90, 0.75, 0.40, 0.10], [0.85, 0.60, 0.30, 0.05], [0.70, 0.50, 0.20, 0.15], [0.65, 0.45, 0.35, 0.25]]
EX_RHO16 = [[0, 2, 8, 14], [1, 5, 10, 15], [3, 6, 12, 13], [4, 7, 9, 11]]
EX_TAU = [[0.0, 0.1562, 0.6250, 0.6250], [0.0781, 0.3906, 0.7812, 0.3125],
          [0.2344, 0.4688, 0.9375, 0.9375], [0.3125, 0.5469, 0.7031, 0.8594]]
EX_S = [[0.9765, 0.8643, 0.0225, 0.0225], [0.9421, 0.2767, 0.0035, 0.4941],
        [0.7138, 0.1303, 0.0005, 0.0005], [0.4941, 0.0554, 0.0089, 0.0014]]
EX_D = [[29, 25, 0, 0], [28, 8, 0, 14], [21, 3, 0, 0], [14, 1, 0, 0]]
EX_COUNTS = [9, 4, 6, 3, 7, 4, 6, 2, 8, 4, 6, 2, 7, 3, 4, 0, 8, 4, 6, 3, 7, 4, 6, 1, 7, 4, 6, 2, 7, 3]
EX_TARGETS = {(0, 2), (0, 3), (1, 2), (2, 2), (2, 3), (3, 2), (3, 3)}


def _cells(mask_n: torch.Tensor) -> set[tuple[int, int]]:
    return {(int(p) // 4, int(p) % 4) for p in torch.nonzero(mask_n).flatten()}


def _example_rho() -> torch.Tensor:
    return percentiles(torch.tensor(EX_B, dtype=torch.float64)[None])


def _solve(area: float, cfg: DepthVARConfig) -> float | None:
    return solve_schedule_constant(area, cfg.schedule, cfg.sigmoid_k, cfg.eta, cfg.rotation, cfg.area_mode)


def _token_layer_fraction(patch_nums, cfg: DepthVARConfig, start_scale: int = 0) -> float:
    """Σ_i N_i mean(d_i) / (L Σ_i N_i) over scales >= start_scale, full depth at standard scales (DV17)."""
    sizes = [pn * pn for pn in patch_nums]
    tables = rank_tables(patch_nums, L, cfg)
    layers = [n * L if t is None else int(t.depth_by_rank.sum()) for t, n in zip(tables, sizes, strict=True)]
    return sum(layers[start_scale:]) / (L * sum(sizes[start_scale:]))


# ---------------------------------------------------------------------------------------------------------------
# DepthVAR check 1: bit-reversal order (DV8)
# ---------------------------------------------------------------------------------------------------------------


def test_bit_reversal_is_a_permutation_and_exact_for_powers_of_two():
    for n in range(1, 65):
        order = bit_reversal_order(n)
        assert sorted(order) == list(range(n))
        pos = layer_positions(n)
        assert all(order[pos[layer]] == layer for layer in range(n))
        k = (n - 1).bit_length()
        if n & (n - 1) == 0:  # power of two: plain k-bit reversal
            assert order == [int(format(x, f"0{k}b")[::-1], 2) if k else 0 for x in range(n)]
    assert bit_reversal_order(32)[:5] == [0, 16, 8, 24, 4]


def test_bit_reversal_reference_orders():
    assert bit_reversal_order(30) == PI_30
    assert layer_positions(30) == POS_30
    assert bit_reversal_order(24) == PI_24


# ---------------------------------------------------------------------------------------------------------------
# DepthVAR check 2: rank map, upsampling, percentiles and ties (DV2, DV3)
# ---------------------------------------------------------------------------------------------------------------


def test_rank_map_upsampling_and_ties():
    up = upsample_rank_map(torch.tensor([[[4.0, 1.0], [2.0, 8.0]]], dtype=torch.float64), (4, 4))
    expected = [[4.0, 3.25, 1.75, 1.0], [3.5, 3.3125, 2.9375, 2.75], [2.5, 3.4375, 5.3125, 6.25], [2.0, 3.5, 6.5, 8.0]]
    torch.testing.assert_close(up[0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    paper = [[4, 9, 14, 15], [5, 8, 10, 11], [12, 7, 3, 2], [13, 5, 1, 0]]
    assert (percentiles(up, "min")[0] * 16).round().long().tolist() == paper
    ordinal = [row[:] for row in paper]
    ordinal[3][1] = 6  # the later 3.5 in raster order takes the next rank
    assert (percentiles(up, "ordinal")[0] * 16).round().long().tolist() == ordinal


def test_percentile_range_and_agreement_without_ties():
    g = torch.Generator().manual_seed(0)
    b = torch.rand(5, 13, 13, generator=g, dtype=torch.float64)
    for ties in ("ordinal", "min"):
        rho = percentiles(b, ties)
        assert rho.dtype == torch.float64 and rho.shape == b.shape
        assert rho.min() == 0 and rho.max() == 168 / 169
    torch.testing.assert_close(percentiles(b, "ordinal"), percentiles(b, "min"), rtol=0, atol=0)
    flat = b.reshape(5, -1)
    assert torch.equal(percentiles(b, "ordinal").reshape(5, -1).argmin(1), flat.argmax(1))  # largest change: rho = 0
    assert torch.equal(percentiles(torch.zeros(1, 2, 2), "min"), torch.zeros(1, 2, 2, dtype=torch.float64))


def test_rank_map_metrics_and_cfg_halves():
    # 2 samples -> 4 rows (cond 0,1; uncond 2,3), 3 tokens, 4 channels, 5 blocks; only blocks 1..2 are summed
    deltas = [torch.full((4, 3, 4), 100.0) for _ in range(5)]
    v = torch.tensor([[1.0, -1.0, 3.0, -3.0], [2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 4.0]])
    for layer in (1, 2):
        deltas[layer] = torch.stack([v, 2 * v, 3 * v, 4 * v])  # rows scaled 1, 2, 3, 4
    mae_row = torch.tensor([2.0, 2.0, 1.0])
    b = rank_map(deltas, (1, 3), (1, 2), "mae", "mean")
    # sample 0: mean of row scales 1 and 3, sample 1: of 2 and 4
    torch.testing.assert_close(b, (2 * mae_row * torch.tensor([2.0, 3.0])[:, None]).reshape(2, 1, 3))
    b = rank_map(deltas, (1, 3), (1, 2), "mae", "cond")
    torch.testing.assert_close(b, (2 * mae_row * torch.tensor([1.0, 2.0])[:, None]).reshape(2, 1, 3))
    mse_row = torch.tensor([5.0, 4.0, 4.0])
    torch.testing.assert_close(rank_map(deltas, (1, 3), (1, 1), "mse", "cond")[0, 0], mse_row)
    # 'sub': squared distance to the mean over the token map of that row and block (channel mean)
    mu = v.mean(0)
    torch.testing.assert_close(rank_map(deltas, (1, 3), (1, 1), "sub", "cond")[0, 0], ((v - mu) ** 2).mean(1))
    # no CFG rows
    torch.testing.assert_close(rank_map(deltas, (1, 3), (1, 1), "mae", batch=4)[:, 0], torch.stack(
        [mae_row * s for s in (1.0, 2.0, 3.0, 4.0)]))
    with pytest.raises(ValueError):
        rank_map(deltas, (1, 3), (3, 5))


# ---------------------------------------------------------------------------------------------------------------
# DepthVAR check 3: the budget constant (DV4-DV6)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("area", "c"), [(25 / 256, 0.066762), (0.25, 0.245755), (0.3125, 0.310539), (0.5, 0.5), (0.64, 0.641077),
                    (0.9, 0.929864)]
)
def test_solver_values(area, c):
    got = solve_schedule_constant(area, "sigmoid", 12.0, rotation=True, area_mode="full")
    assert got == pytest.approx(c, abs=1e-6)
    # without rotation 'full' is the same integral (DV6)
    got = solve_schedule_constant(area, rotation=False, area_mode="full")
    assert got == pytest.approx(c, abs=1e-6)
    assert solve_schedule_constant(0.5, rotation=True, area_mode="full") == pytest.approx(0.5, abs=1e-15)


def test_sigmoid_head_value_and_g0():
    assert solve_schedule_constant(0.25) == pytest.approx(0.310539, abs=1e-6)  # 'head': I = 0.25 / 0.8
    g0 = schedule_value(torch.tensor(0.0, dtype=torch.float64), "sigmoid", 0.066762, 12.0)
    assert float(g0) == pytest.approx(0.6902, abs=5e-5)


def test_linear_closed_forms():
    for a_prime in (0.1, 0.3, 0.5, 0.7, 0.95):
        c_a = 2 * (1 - a_prime) if a_prime >= 0.5 else 1 / (2 * a_prime)
        c_b = -2 * a_prime if a_prime <= 0.5 else -1 / (2 * (1 - a_prime))
        assert solve_schedule_constant(a_prime, "linear-a", area_mode="full") == pytest.approx(c_a, rel=1e-12)
        assert solve_schedule_constant(a_prime, "linear-b", area_mode="full") == pytest.approx(c_b, rel=1e-12)
        # 'head' with rotation: I(c) = A / eta
        assert solve_schedule_constant(0.8 * a_prime, "linear-a") == pytest.approx(c_a, rel=1e-12)


def _numeric_area(c: float, cfg: DepthVARConfig) -> float:
    """∫ G(tau(rho)) d rho over [0, eta] ('head') or [0, 1] ('full') — the definition, by quadrature."""

    def g(rho: float) -> float:
        x = torch.tensor(rho, dtype=torch.float64)
        x = tent(x, cfg.eta) if cfg.rotation else x
        return float(schedule_value(x, cfg.schedule, c, cfg.sigmoid_k))

    upper = cfg.eta if cfg.area_mode == "head" else 1.0
    # where G bends in x (sigmoid centre, end of a clipped linear piece), mapped through both tent branches
    bend = {"sigmoid": c, "linear-a": 1 / c, "linear-b": 1 + 1 / c}[cfg.schedule]
    rhos = [cfg.eta, cfg.eta * bend, 1 - (1 - cfg.eta) * bend] if cfg.rotation else [bend]
    kinks = sorted(p for p in rhos if 0 < p < upper)
    return integrate.quad(g, 0.0, upper, points=kinks or None, limit=400, epsabs=1e-13, epsrel=1e-13)[0]


@pytest.mark.parametrize("family", ["sigmoid", "linear-a", "linear-b"])
@pytest.mark.parametrize("k", [3.0, 12.0, 256.0])
def test_closed_form_vs_quadrature(family, k):
    for area_mode in ("head", "full"):
        for rotation in (True, False):
            cfg = DepthVARConfig(schedule=family, sigmoid_k=k, area_mode=area_mode, rotation=rotation)
            for area in (0.02, 0.0977, 0.25, 0.39, 0.5, 0.64, 0.75):
                closed = _solve(area, cfg)
                if area >= (0.8 if area_mode == "head" else 1.0):
                    assert closed is None
                    continue
                assert _numeric_area(closed, cfg) == pytest.approx(area, abs=1e-8)


@pytest.mark.parametrize("family", ["sigmoid", "linear-a", "linear-b"])
def test_solver_monotone_and_infeasible(family):
    areas = [0.05 * i for i in range(1, 16)]  # up to 0.75 < eta
    cs = [solve_schedule_constant(a, family) for a in areas]
    diffs = [b - a for a, b in zip(cs, cs[1:], strict=False)]
    assert all(x > 0 for x in diffs) if family == "sigmoid" else all(x < 0 for x in diffs)
    head = [_numeric_area(c, DepthVARConfig(schedule=family)) for c in cs]  # ∫_0^eta G(tau) = eta I(c) = A
    assert head == pytest.approx(areas, abs=1e-8)
    # A' >= 1: full depth
    assert solve_schedule_constant(0.8, family) is None
    assert solve_schedule_constant(0.85, family) is None
    assert solve_schedule_constant(1.0, family, area_mode="full") is None
    assert solve_schedule_constant(0.8, family, rotation=False) is None  # head without rotation needs A < eta
    cfg = DepthVARConfig(schedule=family)
    rho = torch.arange(16, dtype=torch.float64) / 16
    assert torch.equal(depth_scores(rho, None, cfg), torch.ones(16, dtype=torch.float64))
    assert torch.equal(integer_depths(depth_scores(rho, None, cfg), L), torch.full((16,), L))


def test_infeasible_scale_runs_full_depth():
    # R = 7, eta = 0.5, 'head': 13x13 has A' = (100/169)/0.5 = 1.18 >= 1 (full depth); 16x16 0.39/0.5 < 1
    plans = rank_tables(PATCH_NUMS, L, DepthVARConfig(reference_scale=7, eta=0.5))
    assert plans[8].full_depth and plans[8].counts == (169,) * L
    assert torch.equal(plans[8].score_by_rank, torch.ones(169, dtype=torch.float64))  # blending by S = 1: no-op
    assert not plans[9].full_depth


# ---------------------------------------------------------------------------------------------------------------
# DepthVAR check 4: the worked example end to end (DV3-DV9, DV13)
# ---------------------------------------------------------------------------------------------------------------


def test_worked_example_scores_depths_counts():
    cfg = DepthVARConfig()
    rho = _example_rho()
    assert (rho[0] * 16).round().long().tolist() == EX_RHO16
    torch.testing.assert_close(tent(rho, 0.8)[0], torch.tensor(EX_TAU, dtype=torch.float64), rtol=0, atol=5e-5)
    c = solve_schedule_constant(4 / 16)
    assert c == pytest.approx(0.310539, abs=1e-6)
    score = depth_scores(rho, c, cfg)
    torch.testing.assert_close(score[0], torch.tensor(EX_S, dtype=torch.float64), rtol=0, atol=5e-5)
    depth = integer_depths(score, L)
    assert depth[0].tolist() == EX_D
    assert float(score.mean()) == pytest.approx(0.3129, abs=5e-5)
    assert float(depth.double().mean()) / L == pytest.approx(0.2979, abs=5e-5)
    # rotation: the smallest change (1,3) gets the depth of (3,0); (0,2) and (0,3) share tau
    assert depth[0, 1, 3] == depth[0, 3, 0] == 14
    mask = layer_major_mask(depth, L)[0]  # (L, 16)
    assert mask.sum(1).tolist() == EX_COUNTS and sum(EX_COUNTS) == 143 == int(depth.sum())
    m0 = {(0, 0), (0, 1), (1, 0), (1, 1), (1, 3), (2, 0), (2, 1), (3, 0), (3, 1)}
    assert _cells(mask[0]) == m0
    assert _cells(mask[16]) == m0 - {(3, 1)}
    assert _cells(mask[23]) == {(0, 0)}
    assert _cells(mask[15]) == set()
    blocks = {p: {int(layer) for layer in torch.nonzero(mask[:, p]).flatten()} for p in range(16)}
    assert blocks[0] == set(PI_30) - {15}
    assert blocks[1] == set(PI_30[:25]) and blocks[4] == set(PI_30[:28]) == set(range(30)) - {23, 15}
    assert blocks[5] == {0, 16, 8, 24, 4, 20, 12, 28}
    assert blocks[7] == blocks[12] == {0, 16, 8, 24, 4, 20, 12, 28, 2, 18, 10, 26, 6, 22}
    assert blocks[9] == {0, 16, 8} and blocks[13] == {0}
    assert _cells(~mask[0]) == EX_TARGETS  # restoration targets = 1 - M(0)


def test_worked_example_variants():
    rho = _example_rho()
    cases = [
        (dict(area_mode="full"), 0.245755, [[28, 22, 0, 0], [26, 4, 0, 9], [16, 1, 0, 0], [9, 0, 0, 0]]),
        (dict(rotation=False), 0.245858, [[28, 24, 1, 0], [27, 9, 0, 0], [20, 5, 0, 0], [14, 2, 0, 0]]),
        (dict(schedule="linear-a", area_mode="full"), 2.0,
         [[30, 20, 0, 0], [25, 6, 0, 11], [15, 1, 0, 0], [11, 0, 0, 0]]),
        (dict(schedule="linear-b", area_mode="full"), -0.5,
         [[15, 12, 5, 5], [13, 9, 3, 10], [11, 7, 0, 0], [10, 6, 4, 2]]),
    ]
    for kwargs, c_expected, d_expected in cases:
        cfg = DepthVARConfig(**kwargs)
        c = _solve(0.25, cfg)
        assert c == pytest.approx(c_expected, abs=1e-6)
        score = depth_scores(rho, c, cfg)
        depth = integer_depths(score, L)
        assert depth[0].tolist() == d_expected, kwargs
        if kwargs == dict(area_mode="full"):
            assert float(score.mean()) == pytest.approx(0.25, abs=5e-5) and int(depth.sum()) == 115
            counts = [8, 4, 6, 2, 6, 3, 4, 1, 7, 3, 4, 2, 6, 3, 4, 0, 7, 3, 4, 2, 6, 3, 4, 0, 7, 3, 4, 1, 6, 2]
            assert layer_major_mask(depth, L)[0].sum(1).tolist() == counts


def _example_deltas(rows_b: torch.Tensor, channels: int = 6) -> list[torch.Tensor]:
    """Per-block Δ (2B, 16, C) whose MAE summed over blocks 3..18 is the given (B, 4, 4) map."""
    deltas = [torch.randn(2 * rows_b.shape[0], 16, channels, dtype=torch.float64) for _ in range(L)]
    for layer in range(3, 19):
        deltas[layer] = torch.zeros_like(deltas[layer])
    signs = torch.tensor([1.0, -1.0] * (channels // 2), dtype=torch.float64)
    flat = rows_b.reshape(rows_b.shape[0], 16, 1)
    deltas[5] = torch.cat([flat * signs, flat * signs]) * 0.5  # cond and uncond halves agree: the mean is the map
    deltas[11] = deltas[5].clone()
    return deltas


def test_worked_example_through_the_scheduler():
    # patch_nums (2, 4, 4), R = 0: scale 2 is accelerated with A = 4/16 and its previous map is also 4x4,
    # so the rank-map upsampling is the identity and the worked example's map enters unchanged.
    cfg = DepthVARConfig(reference_scale=0)
    plans = rank_tables((2, 4, 4), L, cfg)
    assert plans[0] is None and plans[2].c == pytest.approx(0.310539, abs=1e-6)
    assert plans[2].counts == tuple(EX_COUNTS)
    b = torch.tensor(EX_B, dtype=torch.float64)[None]
    maps = depth_maps(_example_deltas(b), plans[2], cfg)
    assert maps.depth[0].tolist() == EX_D
    torch.testing.assert_close(maps.score[0], torch.tensor(EX_S, dtype=torch.float64), rtol=0, atol=5e-5)
    assert maps.mask.shape == (1, L, 16) and maps.mask[0].sum(1).tolist() == EX_COUNTS
    assert maps.order[0, 0] == 0 and maps.order[0, -1] == 7  # largest change (0,0), smallest (1,3)
    maps_min = depth_maps(_example_deltas(b), plans[2], replace(cfg, rank_ties="min"))
    assert torch.equal(maps_min.depth, maps.depth) and maps_min.order is None


# ---------------------------------------------------------------------------------------------------------------
# DepthVAR check 5: static counts under ordinal ranks (DV3)
# ---------------------------------------------------------------------------------------------------------------


def test_counts_identical_across_batch():
    cfg = DepthVARConfig()
    plans = rank_tables(PATCH_NUMS, L, cfg)
    g = torch.Generator().manual_seed(1)
    for plan in plans[7:]:
        h, w = plan.prev_hw
        deltas = [torch.randn(16, h * w, 8, generator=g) for _ in range(L)]
        deltas[4][3, :5] = 0.0  # a few ties inside one sample
        maps = depth_maps(deltas, plan, cfg)
        assert maps.mask.shape == (8, L, plan.hw[0] * plan.hw[1])
        counts = maps.mask.sum(-1)
        assert (counts == torch.tensor(plan.counts)).all()
        # every sample has the same multiset of depths
        assert (maps.depth.reshape(8, -1).sort(1).values == plan.depth_by_rank.sort().values).all()


def test_tables_per_layer_counts_and_histogram():
    plans = rank_tables(PATCH_NUMS, L, DepthVARConfig())  # R = 6, 'head'
    expected = {
        7: (0.807919, [100, 79, 88, 69, 94, 76, 83, 59, 99, 77, 86, 66, 91, 72, 81, 0,
                       100, 78, 87, 67, 92, 73, 82, 53, 97, 76, 84, 62, 89, 71], 2331),
        8: (0.473238, [127, 78, 92, 61, 103, 71, 84, 43, 111, 74, 88, 53, 97, 66, 79, 0,
                       117, 76, 89, 57, 99, 68, 82, 33, 107, 72, 86, 49, 94, 63], 2319),
        9: (0.310539, [152, 77, 98, 49, 114, 64, 86, 23, 127, 71, 91, 39, 104, 58, 79, 0,
                       136, 74, 94, 46, 109, 62, 82, 8, 119, 68, 88, 33, 101, 54], 2306),
    }
    assert all(plan is None for plan in plans[:7])
    for i, (c, counts, total) in expected.items():
        assert plans[i].c == pytest.approx(c, abs=1e-6)
        assert list(plans[i].counts) == counts and sum(counts) == total == int(plans[i].depth_by_rank.sum())
    hist = [104, 16, 9, 8, 5, 5, 5, 3, 3, 4, 3, 3, 2, 4, 3, 2, 3, 3, 3, 4, 2, 4, 4, 5, 3, 7, 6, 10, 15, 8, 0]
    assert torch.bincount(plans[9].depth_by_rank, minlength=L + 1).tolist() == hist


# DV17 'head' table: per accelerated scale (side, A_i, A_i/eta, c, realised mean d/L, share of d=0, max S)
HEAD_TABLE = {
    4: [(6, .694, .868, .8872, .844, 0, 1.000), (8, .391, .488, .4882, .471, .23, .997),
        (10, .250, .313, .3105, .300, .41, .976), (13, .148, .185, .1753, .175, .54, .891),
        (16, .098, .122, .1002, .113, .62, .769)],
    # 16x16 share of d=0: .555, counted by hand in test_zero_share_r5_16x16_by_hand
    5: [(8, .563, .703, .7055, .683, .02, 1.000), (10, .360, .450, .4497, .435, .27, .995),
        (13, .213, .266, .2628, .255, .46, .959), (16, .141, .176, .1650, .166, .555, .879)],
    6: [(10, .640, .800, .8079, .777, 0, 1.000), (13, .379, .473, .4732, .457, .25, .997),
        (16, .250, .313, .3105, .300, .41, .976)],
    7: [(13, .592, .740, .7434, .718, 0, 1.000), (16, .391, .488, .4882, .472, .23, .997)],
    8: [(16, .660, .825, .8361, .801, 0, 1.000)],
}


@pytest.mark.parametrize("ref", sorted(HEAD_TABLE))
def test_budget_table_head(ref):
    cfg = DepthVARConfig(reference_scale=ref)
    plans = rank_tables(PATCH_NUMS, L, cfg)
    areas = reference_areas(PATCH_NUMS, ref)
    accelerated = [i for i, p in enumerate(plans) if p is not None]
    assert accelerated == list(range(ref + 1, len(PATCH_NUMS)))
    for i, (side, area, a_eta, c, mean_d, zero_share, max_s) in zip(accelerated, HEAD_TABLE[ref], strict=True):
        plan = plans[i]
        assert plan.hw == (side, side)
        assert areas[i] == pytest.approx(area, abs=5.01e-4) and areas[i] / 0.8 == pytest.approx(a_eta, abs=5.01e-4)
        assert plan.c == pytest.approx(c, abs=5e-5)
        depth = plan.depth_by_rank.double()
        assert float(depth.mean()) / L == pytest.approx(mean_d, abs=5.01e-4)
        assert float((depth == 0).double().mean()) == pytest.approx(zero_share, abs=5.01e-3)
        assert float(plan.score_by_rank.max()) == pytest.approx(max_s, abs=5.01e-4)
        assert plan.counts[15] == 0  # sigmoid: G(0) < 1, the last block of pi_30 never runs (DV9)


def test_zero_share_r5_16x16_by_hand():
    """The d = 0 share for R = 5 at 16x16 (DV17), counted with plain math from c = .1650 (no code under test).

    142 of 256 ranks have 30 * S < 1, i.e. 0.5547 (-> .555). No rank lies near the threshold, so the 4-digit c
    cannot flip it.
    """
    zeros = 0
    for r in range(256):
        rho = r / 256
        tau = rho / 0.8 if rho <= 0.8 else (1 - rho) / 0.2
        zeros += 30 / (1 + math.exp(12 * (tau - 0.1650))) < 1
    assert zeros == 142
    plan = rank_tables(PATCH_NUMS, L, DepthVARConfig(reference_scale=5))[9]
    assert int((plan.depth_by_rank == 0).sum()) == zeros


def test_token_layer_fractions():
    head = [0.300, 0.388, 0.569, 0.731, 0.925]
    full = [0.255, 0.336, 0.500, 0.659, 0.864]
    for ref, f_head, f_full in zip(range(4, 9), head, full, strict=True):
        head_cfg = DepthVARConfig(reference_scale=ref)
        assert _token_layer_fraction(PATCH_NUMS, head_cfg) == pytest.approx(f_head, abs=5.01e-4)
        cfg = DepthVARConfig(reference_scale=ref, area_mode="full")
        assert _token_layer_fraction(PATCH_NUMS, cfg) == pytest.approx(f_full, abs=5.01e-4)
    assert scale_constants(PATCH_NUMS, L, DepthVARConfig(reference_scale=4, area_mode="full"))[9] == pytest.approx(
        0.0668, abs=5e-5)
    assert scale_constants(PATCH_NUMS, L, DepthVARConfig(area_mode="full"))[9] == pytest.approx(0.2458, abs=5e-5)


def test_no_acceleration_and_linear_a_full_depth():
    assert rank_tables(PATCH_NUMS, L, DepthVARConfig(reference_scale=9)) == [None] * 10  # R >= K-1: baseline
    assert _token_layer_fraction(PATCH_NUMS, DepthVARConfig(reference_scale=9)) == 1.0
    plans = rank_tables(PATCH_NUMS, L, DepthVARConfig(schedule="linear-a"))
    assert all(p.depth_by_rank[0] == L and p.counts[15] >= 1 for p in plans[7:])  # G(0) = 1 reaches d = L


def test_match_discrete_budget():
    # realised Σ d = A' * N * L: 'head', R = 6 => A_i/eta * N_i * L = 64 / 0.8 * 30 = 2400 at every accelerated scale
    plans = rank_tables(PATCH_NUMS, L, DepthVARConfig(match_discrete_budget=True))
    for plan in plans[7:]:
        assert abs(int(plan.depth_by_rank.sum()) - 2400) <= 1
    # without rotation, 'head': the left Riemann sum over rho < eta of d equals A_i N_i L = 64 * 30
    plans = rank_tables(PATCH_NUMS, L, DepthVARConfig(match_discrete_budget=True, rotation=False))
    for plan in plans[7:]:
        n = plan.hw[0] * plan.hw[1]
        head = torch.arange(n) < 0.8 * n
        assert abs(int(plan.depth_by_rank[head].sum()) - 1920) <= 1


# ---------------------------------------------------------------------------------------------------------------
# Equal-compute budget solver (project decision)
# ---------------------------------------------------------------------------------------------------------------


def test_budget_solver_matches_variant_subnets():
    flexible = 8 * 8 + 10 * 10 + 13 * 13 + 16 * 16  # bridge N = 6: scales 8..16, 589 tokens ([VARiant])
    assert flexible == 589
    previous = (0.0, 0)
    for depth in range(1, L + 1):
        sol = budget_for_depth(PATCH_NUMS, L, bridge=6, depth=depth)
        assert sol.target_token_layers == depth * flexible
        assert sol.config.reference_scale == 5 and not sol.config.match_discrete_budget
        # one common c on all flexible scales, standard inference before them
        assert sol.constants[:6] == (None,) * 6
        # within one token-layer, i.e. |fraction - d/L| <= 1 / (L * 589)
        assert abs(sol.token_layers - depth * flexible) <= 1
        assert abs(sol.achieved_fraction - depth / L) <= 1 / (L * flexible) + 1e-12
        assert sol.config.target_fraction >= previous[0] and sol.token_layers >= previous[1]  # monotone in d
        previous = (sol.config.target_fraction, sol.token_layers)
        # the returned config reproduces the solution through the ordinary path
        assert _token_layer_fraction(PATCH_NUMS, sol.config, start_scale=6) == sol.achieved_fraction
        if depth < L:
            assert len({c for c in sol.constants[6:]}) == 1 and sol.constants[6] is not None
    # d = L: full depth everywhere
    assert sol.constants[6:] == (None,) * 4 and sol.achieved_fraction == 1.0 and sol.token_layers == L * flexible
    # VARiant-d16 with bridge 6: 16 * 589 = 9424 token-layers
    assert budget_for_depth(PATCH_NUMS, L, 6, 16).token_layers == 9424


def test_budget_solver_other_settings_best_achievable():
    for cfg in (DepthVARConfig(area_mode="full"), DepthVARConfig(schedule="linear-a"), DepthVARConfig(rotation=False)):
        sol = budget_for_depth(PATCH_NUMS, L, bridge=7, depth=8, cfg=cfg)
        miss = abs(sol.token_layers - sol.target_token_layers)
        f = sol.config.target_fraction
        for scale in (0.9, 0.97, 0.99, 0.999, 1.001, 1.01, 1.03, 1.1):  # no nearby f does better
            probe = _token_layer_fraction(PATCH_NUMS, replace(sol.config, target_fraction=f * scale), start_scale=7)
            assert abs(probe * L * 525 - sol.target_token_layers) >= miss - 1e-6
    with pytest.raises(ValueError):
        budget_for_depth(PATCH_NUMS, L, bridge=0, depth=8)
    with pytest.raises(ValueError):
        budget_for_depth(PATCH_NUMS, L, bridge=6, depth=31)


# ---------------------------------------------------------------------------------------------------------------
# DepthVAR check 9: similarity restoration (DV13)
# ---------------------------------------------------------------------------------------------------------------


def test_anchor_grid_and_candidates():
    assert anchor_lines(8) == [0, 5, 7] and anchor_lines(10) == [0, 5, 9]
    assert anchor_lines(13) == [0, 5, 10, 12] and anchor_lines(16) == [0, 5, 10, 15] and anchor_lines(4) == [0, 3]

    def cands(side: int, m: int, n: int) -> set[tuple[int, int]]:
        anchors, candidates = anchor_candidates(side, side, 5)
        return {(int(a) // side, int(a) % side) for a in anchors[candidates[m * side + n]]}

    assert cands(16, 7, 7) == {(5, 5), (5, 10), (10, 5), (10, 10)}
    assert cands(13, 11, 11) == {(10, 10), (10, 12), (12, 10), (12, 12)}
    assert all(cands(4, m, n) == {(0, 0), (0, 3), (3, 0), (3, 3)} for m in range(4) for n in range(4))


def test_restoration_worked_example():
    depth = torch.tensor(EX_D)[None]  # anchors (0,0) d=29, (0,3) d=0, (3,0) d=14, (3,3) d=0
    e = torch.eye(4, dtype=torch.float32)
    feats = torch.zeros(1, 16, 4)
    feats[0, 0], feats[0, 3], feats[0, 12], feats[0, 15] = e[0], e[2], e[1], e[3]
    feats[0, 2] = e[2]  # target (0,2): identical only to the d = 0 anchor (0,3) -> never copied
    feats[0, 6] = 2 * e[0]  # target (1,2): like (0,0) (cosine exactly 1)
    feats[0, 10] = e[1]  # target (2,2): like (3,0)
    feats[0, 11] = e[0]  # target (2,3): like (0,0)
    feats[0, 14] = e[0] + e[1]  # target (3,2): cosine 0.707 with both admissible anchors -> kept
    feats[0, 5] = e[0]  # (1,1) has d = 8: not a target even though it matches (0,0)
    hidden = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)  # cond + uncond rows

    out, source = restore_similar(hidden, depth, feats, window=5, threshold=0.9)
    expected = torch.arange(16)
    expected[6], expected[10], expected[11] = 0, 12, 0
    assert source[0].tolist() == expected.tolist()
    assert torch.equal(out, hidden[:, expected])  # both CFG rows copy from the same anchor
    restored = {(int(p) // 4, int(p) % 4) for p in torch.nonzero(source[0] != torch.arange(16)).flatten()}
    assert restored <= EX_TARGETS  # only d = 0 tokens
    assert all(int(depth.flatten()[s]) >= 1 for s in source[0][source[0] != torch.arange(16)])  # admissible sources

    # strict threshold: a cosine of exactly 1.0 does not pass threshold 1.0
    _, source = restore_similar(hidden, depth, feats, window=5, threshold=1.0)
    assert torch.equal(source[0], torch.arange(16))


def test_restoration_no_admissible_anchor_and_batch():
    depth = torch.zeros(2, 4, 4, dtype=torch.long)
    depth[1, 0, 0] = 3
    feats = torch.ones(2, 16, 5)
    hidden = torch.randn(4, 16, 7)
    out, source = restore_similar(hidden, depth, feats)
    assert torch.equal(source[0], torch.arange(16))  # no anchor ran any block
    assert torch.equal(source[1], torch.tensor([0] + [0] * 15))  # everything copies (0,0), itself included
    assert torch.equal(out[0], hidden[0]) and torch.equal(out[2], hidden[2])
    assert torch.equal(out[1], hidden[1, :1].expand(16, 7)) and torch.equal(out[3], hidden[3, :1].expand(16, 7))


def test_upsample_tokens_nearest_logits():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # (B, 2x2, V)
    up = upsample_tokens(logits, (2, 2), (4, 4), "nearest")
    assert up.shape == (2, 16, 3)
    for dst, src in ((5, 0), (15, 3), (2, 1)):
        assert torch.equal(up[:, dst], logits[:, src])
    bil = upsample_tokens(logits, (2, 2), (4, 4), "bilinear")
    torch.testing.assert_close(bil[:, 0], logits[:, 0])  # corners of align_corners=False bilinear


def test_config_validation():
    assert DepthVARConfig(ref_layer_range=[2, 9]).ref_layer_range == (2, 9)
    bad = [dict(metric="l1"), dict(schedule="cosine"), dict(area_mode="tail"), dict(rank_ties="dense"),
           dict(cfg_halves="uncond"), dict(rank_upsample="bicubic"), dict(proxy_upsample="nearest"), dict(eta=1.0),
           dict(eta=0.0), dict(sigmoid_k=0), dict(ref_layer_range=(5, 3)), dict(reference_scale=-1),
           dict(restore_threshold=1.5), dict(restore_window=0), dict(target_fraction=0.0), dict(rotation=1)]
    for kwargs in bad:
        with pytest.raises(ValueError):
            DepthVARConfig(**kwargs)
