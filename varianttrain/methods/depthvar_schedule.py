"""DepthVAR (per-token dynamic depth) — the pure, model-independent math.

Everything here follows the DepthVAR port defined in docs/METHODS.md (steps DV1-DV17, cited by number) and the
paper [DepthVAR] (arXiv 2604.17286); the tags [P] (stated in the paper) / [D] (decision of this port) are those of
docs/METHODS.md. Nothing touches a model: the sampler integration (gathers,
proxies, KV cache) calls these functions once per scale.

Use inside the sampler loop (`varianttrain.methods.depthvar` does exactly this through the sampler hooks)::

    tables = rank_tables(patch_nums, num_layers, cfg)         # once: constants, scores and counts per scale
    ...
    table = tables[i]                                         # None: standard full-depth inference
    if table is not None:
        maps = depth_maps(delta_prev, table, cfg)             # S (B,h,w), d (B,h,w), mask (B,L,N), order (B,N)
        ... blocks on the mask; proxies x + up(delta_prev[l]) for the tokens a block skips
        x, src = restore_similar(x, maps.depth, logits_prev upsampled to (h, w))
        codes = codes * maps.score                            # when cfg.blending (pre-phi, DV14)

Shapes: B images (the model sees 2B rows with CFG: [0,B) conditional, [B,2B) unconditional), N = h*w tokens of
the current scale in raster order, L blocks, C width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from varianttrain.methods.common import match_budget

FAMILIES = ("sigmoid", "linear-a", "linear-b")
# Token-layer budgets are solved to this resolution in the target area f: a step of the realised count narrower
# than 1e-15 is a float rounding artefact of the schedule, not a different budget.
AREA_RESOLUTION = 1e-15


def _check(value: object, name: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"DepthVARConfig.{name}={value!r}; expected one of {allowed}")


@dataclass(frozen=True)
class DepthVARConfig:
    """All DepthVAR options with the port's VAR-d30 defaults (docs/METHODS.md DV16)."""

    reference_scale: int = 6  # R: scales i <= R run at full depth, i > R are accelerated [P]
    ref_layer_range: tuple[int, int] = (3, 18)  # inclusive block range summed into the rank map (DV2, DV16)
    metric: str = "mae"  # 'mae' | 'mse' | 'sub' (DV2)
    schedule: str = "sigmoid"  # 'sigmoid' | 'linear-a' | 'linear-b' (DV4)
    sigmoid_k: float = 12.0  # sigmoid steepness k [P]
    eta: float = 0.8  # tent peak of the cyclic percentile rotation, 0 < eta < 1 [P]
    rotation: bool = True  # False: the "w/o rotation" ablation, S = G(rho)
    area_mode: str = "head"  # 'head': eta*I(c) = A_i (literal paper); 'full': I(c) = A_i (DV6)
    rank_ties: str = "ordinal"  # 'ordinal' (stable, raster tie-break) | 'min' (paper-exact ties) (DV3)
    cfg_halves: str = "mean"  # rank map from the mean of both CFG rows | 'cond' only (DV2, DV15)
    rank_upsample: str = "bilinear"  # 'bilinear' | 'nearest' (DV2)
    proxy_upsample: str = "bilinear"  # masked-block proxy up(Δ) [P] (DV10)
    restoration: bool = True  # similarity restoration of d = 0 tokens (DV13)
    restore_threshold: float = 0.9  # strict: restore only when cosine similarity > threshold [P]
    restore_window: int = 5  # anchor grid spacing in tokens [P]
    restore_weight: str = "own"  # code weight of a restored token: its own S | the 'anchor' S (DV13 step 6)
    blending: bool = True  # multiply the code vectors by the continuous S before phi (literal Eq. 2, DV14)
    match_discrete_budget: bool = False  # solve c on the realised floor(L*S) budget instead of the area (DV6)
    # Project extension (not in the paper): one common target area f for every accelerated scale instead of
    # A_i = N_R / N_i. Set by budget_for_depth for the equal-compute comparison with a VARiant subnet.
    target_fraction: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ref_layer_range, list):  # YAML gives lists; keep the dataclass hashable
            object.__setattr__(self, "ref_layer_range", tuple(self.ref_layer_range))
        if not isinstance(self.reference_scale, int) or self.reference_scale < 0:
            raise ValueError(f"DepthVARConfig.reference_scale={self.reference_scale!r}; expected an int >= 0")
        lo_hi = self.ref_layer_range
        if len(lo_hi) != 2 or not all(isinstance(v, int) for v in lo_hi) or not 0 <= lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"DepthVARConfig.ref_layer_range={lo_hi!r}; expected inclusive (begin, end)")
        _check(self.metric, "metric", ("mae", "mse", "sub"))
        _check(self.schedule, "schedule", FAMILIES)
        _check(self.area_mode, "area_mode", ("head", "full"))
        _check(self.rank_ties, "rank_ties", ("ordinal", "min"))
        _check(self.cfg_halves, "cfg_halves", ("mean", "cond"))
        _check(self.rank_upsample, "rank_upsample", ("bilinear", "nearest"))
        _check(self.proxy_upsample, "proxy_upsample", ("bilinear",))
        _check(self.restore_weight, "restore_weight", ("own", "anchor"))
        if not self.sigmoid_k > 0:
            raise ValueError(f"DepthVARConfig.sigmoid_k={self.sigmoid_k!r}; expected > 0")
        if not 0.0 < self.eta < 1.0:
            raise ValueError(f"DepthVARConfig.eta={self.eta!r}; expected 0 < eta < 1")
        if not -1.0 <= self.restore_threshold <= 1.0:
            raise ValueError(f"DepthVARConfig.restore_threshold={self.restore_threshold!r}; expected [-1, 1]")
        if not isinstance(self.restore_window, int) or self.restore_window < 1:
            raise ValueError(f"DepthVARConfig.restore_window={self.restore_window!r}; expected an int >= 1")
        for name in ("rotation", "restoration", "blending", "match_discrete_budget"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DepthVARConfig.{name}={getattr(self, name)!r}; expected a bool")
        if self.target_fraction is not None and not self.target_fraction > 0:
            raise ValueError(f"DepthVARConfig.target_fraction={self.target_fraction!r}; expected None or > 0")


# ----------------------------------------------------------------------------------------------------------------
# Layer order and masks (DV7-DV9)
# ----------------------------------------------------------------------------------------------------------------


def bit_reversal_order(num_layers: int) -> list[int]:
    """pi_L: rev_k(x) for x = 0..2^k-1 (k = ceil(log2 L)) with values >= L dropped, order kept (DV8).

    Exactly the paper's order for powers of two; for other L it is the only rule that stays a permutation
    (clamping or modulo would duplicate layers).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers={num_layers}; expected >= 1")
    k = (num_layers - 1).bit_length()  # ceil(log2 L)
    rev = [int(format(x, f"0{k}b")[::-1], 2) if k else 0 for x in range(1 << k)]
    return [r for r in rev if r < num_layers]


def layer_positions(num_layers: int) -> list[int]:
    """pos_L[l] = position of block l in pi_L; block l runs for a token iff pos_L[l] < d (DV9)."""
    pos = [0] * num_layers
    for j, layer in enumerate(bit_reversal_order(num_layers)):
        pos[layer] = j
    return pos


def integer_depths(score: Tensor, num_layers: int) -> Tensor:
    """d = clamp(floor(L*S), 0, L) as int64 [P] (DV7). Pass float64 S where exact floors matter."""
    return torch.floor(score * num_layers).clamp_(0, num_layers).long()


def layer_major_mask(depth: Tensor, num_layers: int, positions: Tensor | None = None) -> Tensor:
    """Bool (B, L, N) with M[b, l, p] = pos_L[l] < d[b, p], from depths (B, h, w) or (B, N) (DV9).

    `positions`: pos_L as an int64 tensor on depth's device (a `ScaleRankTable` holds one), saving a host copy.
    """
    pos = torch.tensor(layer_positions(num_layers), device=depth.device) if positions is None else positions
    return depth.reshape(depth.shape[0], 1, -1) > pos[None, :, None]


# ----------------------------------------------------------------------------------------------------------------
# Decision rank map and percentiles (DV2, DV3)
# ----------------------------------------------------------------------------------------------------------------


def _token_metric(delta: Tensor, metric: str) -> Tensor:
    """E(Δ) per row and token, (R, N). Channel mean (not sum): same ranking (DV2), comparable magnitudes."""
    acc = torch.float64 if delta.dtype == torch.float64 else torch.float32
    num_channels = delta.shape[-1]
    if metric == "mae":
        return torch.linalg.vector_norm(delta, 1, dim=-1, dtype=acc) / num_channels
    if metric == "mse":
        return torch.linalg.vector_norm(delta, 2, dim=-1, dtype=acc).square() / num_channels
    # 'sub' [D, DV2]: squared distance to the mean change over the token map of that row and block.
    centred = delta.to(acc) - delta.mean(dim=1, keepdim=True, dtype=acc)
    return torch.linalg.vector_norm(centred, 2, dim=-1).square() / num_channels


def rank_map(
    deltas: Sequence[Tensor] | Tensor,
    hw: tuple[int, int],
    layer_range: tuple[int, int] = (3, 18),
    metric: str = "mae",
    cfg_halves: str = "mean",
    batch: int | None = None,
) -> Tensor:
    """b_{i-1}: (B, h_prev, w_prev) map of summed per-token block changes of the previous scale (DV2).

    Args:
        deltas: per block l, Δ^l of the previous scale, (R, N_prev, C) each (a list or an (L, R, N_prev, C) stack).
        hw: (h_prev, w_prev).
        layer_range: inclusive [begin, end] of blocks summed.
        metric: 'mae' | 'mse' | 'sub'.
        cfg_halves: R = 2B rows are combined per sample: 'mean' of both halves [D] or the 'cond' half only.
        batch: B; default R // 2 (CFG). Pass batch = R when the rows carry no CFG pair.
    """
    begin, end = layer_range
    if not 0 <= begin <= end < len(deltas):
        raise ValueError(f"layer_range={layer_range} outside the {len(deltas)} recorded blocks")
    total = _token_metric(deltas[begin], metric)
    for layer in range(begin + 1, end + 1):
        total = total + _token_metric(deltas[layer], metric)
    rows = total.shape[0]
    batch = rows // 2 if batch is None else batch
    if rows == 2 * batch:
        total = total[:batch] if cfg_halves == "cond" else 0.5 * (total[:batch] + total[batch:])
    elif rows != batch:
        raise ValueError(f"{rows} rows cannot be split into a batch of {batch}")
    return total.reshape(batch, *hw)


def upsample_rank_map(b: Tensor, hw: tuple[int, int], mode: str = "bilinear") -> Tensor:
    """B_i = up(b_{i-1}) to (h, w): bilinear with align_corners=False and no antialias [P+D], or nearest (DV2)."""
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(b[:, None], size=tuple(hw), mode=mode, **kwargs)[:, 0]


def ordinal_order(b: Tensor) -> tuple[Tensor, Tensor]:
    """(order, rank), both (B, N): tokens by descending B with ties in raster order, and each token's rank (DV3)."""
    flat = b.reshape(b.shape[0], -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=b.device).expand_as(order))
    return order, rank


def percentiles(b: Tensor, ties: str = "ordinal") -> Tensor:
    """rho in {0, 1/N, .., (N-1)/N}, float64, shape of b (B, h, w); rho = 0 for the largest change (DV3).

    'ordinal' [D default]: rank in a stable descending sort (raster tie-break). 'min' [P]: #{q: B(q) > B(p)} / N.
    """
    flat = b.reshape(b.shape[0], -1)
    n = flat.shape[1]
    if ties == "ordinal":
        count = ordinal_order(b)[1]
    elif ties == "min":
        ascending = torch.sort(flat, dim=1).values
        count = n - torch.searchsorted(ascending, flat.contiguous(), right=True)
    else:
        raise ValueError(f"ties={ties!r}; expected 'ordinal' or 'min'")
    return (count.to(torch.float64) / n).reshape(b.shape)


# ----------------------------------------------------------------------------------------------------------------
# Schedules, rotation and the budget constant (DV4-DV6)
# ----------------------------------------------------------------------------------------------------------------


def tent(rho: Tensor, eta: float = 0.8) -> Tensor:
    """Cyclic rotation tau_eta: rho/eta up to eta, then the reflection (1-rho)/(1-eta) — not a sawtooth (DV5)."""
    return torch.where(rho <= eta, rho / eta, (1.0 - rho) / (1.0 - eta))


def schedule_value(x: Tensor, family: str, c: float, k: float = 12.0) -> Tensor:
    """G(x; c), decreasing on [0, 1]; the linear forms are clipped to [0, 1] (DV4)."""
    if family == "sigmoid":
        return torch.sigmoid(-k * (x - c))  # the stable form, k = 256 occurs in the ablation
    if family == "linear-a":
        return (1.0 - c * x).clamp(0.0, 1.0)
    if family == "linear-b":  # c < 0 is the decreasing convention of the paper's c*(x-1) [D]
        return (c * (x - 1.0)).clamp(0.0, 1.0)
    raise ValueError(f"family={family!r}; expected one of {FAMILIES}")


def _log_expm1(z: float) -> float:
    """log(e^z - 1) for z > 0, free of overflow (large z) and cancellation (small z)."""
    return math.log(math.expm1(z)) if z < 30.0 else z + math.log1p(-math.exp(-z))


def _inverse_area(target: float, upper: float, family: str, k: float) -> float:
    """c with J(c) = target for 0 < target < upper; the closed forms of DV6 generalised to any upper limit."""
    t, u = target, upper
    if family == "sigmoid":  # c = (1/k) ln[(e^{kT} - 1) / (e^{k(u-T)} - 1) * e^{k(u-T)}]
        return (_log_expm1(k * t) - _log_expm1(k * (u - t)) + k * (u - t)) / k
    if family == "linear-a":
        return 2 * (u - t) / (u * u) if t >= u / 2 else 1 / (2 * t)
    if family == "linear-b":
        if t <= u - u * u / 2:
            return -t / (u - u * u / 2)
        # smaller root of (1-u)^2 a^2 - 2(1-T) a + 1 = 0, written without cancellation
        return -1 / ((1 - t) + math.sqrt((1 - t) ** 2 - (1 - u) ** 2))
    raise ValueError(f"family={family!r}; expected one of {FAMILIES}")


def _area_target(target_area: float, eta: float, rotation: bool, area_mode: str) -> tuple[float, float]:
    """(upper, T): the budget as ∫_0^upper G = T (DV6).

    With rotation both tent branches map affinely onto [0, 1], so ∫_0^1 G(tau) = I(c) and ∫_0^eta G(tau) = eta I(c).
    """
    if rotation:
        return 1.0, target_area / eta if area_mode == "head" else target_area
    return (eta if area_mode == "head" else 1.0), target_area


def solve_schedule_constant(
    target_area: float,
    family: str = "sigmoid",
    k: float = 12.0,
    eta: float = 0.8,
    rotation: bool = True,
    area_mode: str = "head",
) -> float | None:
    """c for a target area A (DV6), or None when A' >= the attainable area: run that scale at full depth.

    Closed forms in float64 (expm1/log1p where cancellation or overflow would bite).
    """
    if not target_area > 0:
        raise ValueError(f"target_area={target_area}; expected > 0")
    upper, target = _area_target(target_area, eta, rotation, area_mode)
    if target >= upper:
        return None
    return _inverse_area(target, upper, family, k)


def depth_scores(rho: Tensor, c: float | None, cfg: DepthVARConfig) -> Tensor:
    """S = G(tau_eta(rho)) (or G(rho) without rotation) [P]; c = None (infeasible budget) gives S = 1."""
    if c is None:
        return torch.ones_like(rho)
    x = tent(rho, cfg.eta) if cfg.rotation else rho
    return schedule_value(x, cfg.schedule, c, cfg.sigmoid_k)


# ----------------------------------------------------------------------------------------------------------------
# Per-scale constants and rank tables
# ----------------------------------------------------------------------------------------------------------------


def _hw(patch: int | Sequence[int]) -> tuple[int, int]:
    return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


def reference_areas(patch_nums: Sequence[int | Sequence[int]], reference_scale: int) -> list[float | None]:
    """A_i = N_R / N_i for accelerated scales i > R, None for i <= R [P] (DV6)."""
    sizes = [h * w for h, w in map(_hw, patch_nums)]
    return [sizes[reference_scale] / n if i > reference_scale else None for i, n in enumerate(sizes)]


def _scale_targets(patch_nums: Sequence[int | Sequence[int]], cfg: DepthVARConfig) -> list[float | None]:
    if cfg.target_fraction is None or cfg.reference_scale >= len(patch_nums) - 1:
        return reference_areas(patch_nums, min(cfg.reference_scale, len(patch_nums) - 1))
    return [cfg.target_fraction if i > cfg.reference_scale else None for i in range(len(patch_nums))]


def _rank_depths(num_tokens: int, c: float | None, num_layers: int, cfg: DepthVARConfig) -> tuple[Tensor, Tensor]:
    """(S, d) of the token with ordinal rank r = 0..N-1 (rho = r/N), float64 / int64 on the CPU."""
    rho = torch.arange(num_tokens, dtype=torch.float64) / num_tokens
    score = depth_scores(rho, c, cfg)
    return score, integer_depths(score, num_layers)


def max_target_area(cfg: DepthVARConfig) -> float:
    """Smallest target area A at which the budget becomes infeasible (full depth), see _area_target."""
    return cfg.eta if cfg.area_mode == "head" else 1.0


def _match_discrete(num_tokens: int, target_area: float, num_layers: int, cfg: DepthVARConfig) -> float | None:
    """c whose realised floor(L*S) budget matches the target (option match_discrete_budget, off by default).

    [D] The discrete analogue of each mode's integral condition: the left Riemann sum over rho = r/N of d/L on the
    same rho range (all tokens with rotation: mean d/L = A'; without rotation: r/N < upper).
    """
    upper, target = _area_target(target_area, cfg.eta, cfg.rotation, cfg.area_mode)
    if target >= upper:
        return None
    counted = torch.arange(num_tokens) < upper * num_tokens

    def realised(p: float) -> float:
        c = solve_schedule_constant(p, cfg.schedule, cfg.sigmoid_k, cfg.eta, cfg.rotation, cfg.area_mode)
        return float(_rank_depths(num_tokens, c, num_layers, cfg)[1][counted].sum())

    p = match_budget(realised, target * num_tokens * num_layers, 1e-12, max_target_area(cfg),
                     resolution=AREA_RESOLUTION)
    return solve_schedule_constant(p, cfg.schedule, cfg.sigmoid_k, cfg.eta, cfg.rotation, cfg.area_mode)


def scale_constants(
    patch_nums: Sequence[int | Sequence[int]], num_layers: int, cfg: DepthVARConfig
) -> list[float | None]:
    """c_i per scale (image-independent, precompute once). None: scale i <= R, or budget infeasible (full depth)."""
    out: list[float | None] = []
    for patch, area in zip(patch_nums, _scale_targets(patch_nums, cfg), strict=True):
        if area is None:
            out.append(None)
        elif cfg.match_discrete_budget:
            h, w = _hw(patch)
            out.append(_match_discrete(h * w, area, num_layers, cfg))
        else:
            out.append(solve_schedule_constant(area, cfg.schedule, cfg.sigmoid_k, cfg.eta, cfg.rotation, cfg.area_mode))
    return out


@dataclass(frozen=True, eq=False)
class ScaleRankTable:
    """What DepthVAR needs at one accelerated scale and that does not depend on the image (DV6, DV11).

    With ordinal ranks the depth is a function of the rank alone, so the scores, depths and per-block counts are
    tables indexed by rank, computed once in float64.
    """

    scale: int
    hw: tuple[int, int]
    prev_hw: tuple[int, int]
    num_layers: int
    c: float | None  # None: budget infeasible, every token runs all blocks (S = 1)
    score_by_rank: Tensor  # (N,) float64
    depth_by_rank: Tensor  # (N,) int64
    counts: tuple[int, ...]  # n_l, l = 0..L-1
    positions: Tensor  # (L,) int64, pos_L (layer_positions): block l runs for a token iff positions[l] < d

    @property
    def full_depth(self) -> bool:
        """True when the scale should simply run standard inference."""
        return self.c is None

    def to(self, device: torch.device | str) -> ScaleRankTable:
        """Copy with the rank tables on device (do it once, not per step)."""
        return replace(self, score_by_rank=self.score_by_rank.to(device), depth_by_rank=self.depth_by_rank.to(device),
                       positions=self.positions.to(device))


def rank_tables(
    patch_nums: Sequence[int | Sequence[int]], num_layers: int, cfg: DepthVARConfig
) -> list[ScaleRankTable | None]:
    """One ScaleRankTable per accelerated scale i > R, None for standard scales; R >= K-1 gives the baseline (DV1)."""
    hws = [_hw(p) for p in patch_nums]
    pos = torch.tensor(layer_positions(num_layers))
    tables: list[ScaleRankTable | None] = []
    for i, c in enumerate(scale_constants(patch_nums, num_layers, cfg)):
        if i <= cfg.reference_scale:
            tables.append(None)
            continue
        score, depth = _rank_depths(hws[i][0] * hws[i][1], c, num_layers, cfg)
        counts = tuple(int(n) for n in (depth[None, :] > pos[:, None]).sum(1))
        tables.append(ScaleRankTable(i, hws[i], hws[i - 1], num_layers, c, score, depth, counts, pos))
    return tables


@dataclass(frozen=True, eq=False)
class DepthMaps:
    """Per-step output of the scheduler for one accelerated scale."""

    score: Tensor  # S (B, h, w) float64, continuous depth score (blending)
    depth: Tensor  # d (B, h, w) int64
    mask: Tensor  # M (B, L, N) bool, layer-major
    order: Tensor | None  # (B, N) tokens by descending change (ordinal ranks); None with 'min' ties


def depth_maps(deltas: Sequence[Tensor] | Tensor, table: ScaleRankTable, cfg: DepthVARConfig) -> DepthMaps:
    """The scheduler of DV1: previous-scale Δ (per block (2B, N_prev, C)) -> S, d and the layer-major mask."""
    b = rank_map(deltas, table.prev_hw, cfg.ref_layer_range, cfg.metric, cfg.cfg_halves)
    b = upsample_rank_map(b, table.hw, cfg.rank_upsample)
    shape = b.shape
    if cfg.rank_ties == "ordinal":
        order, rank = ordinal_order(b)
        score = table.score_by_rank.to(b.device)[rank]
        depth = table.depth_by_rank.to(b.device)[rank]
    else:  # counts may differ between images: the caller pads (DV15)
        order = None
        score = depth_scores(percentiles(b, "min"), table.c, cfg)
        depth = integer_depths(score, table.num_layers)
    mask = layer_major_mask(depth, table.num_layers, table.positions.to(depth.device))
    return DepthMaps(score.reshape(shape), depth.reshape(shape), mask, order)


# ----------------------------------------------------------------------------------------------------------------
# Compute budgets (DV17) and the equal-compute solver (project decision)
# ----------------------------------------------------------------------------------------------------------------


def _token_layers(tables: Sequence[ScaleRankTable | None], sizes: Sequence[int], num_layers: int,
                  start: int) -> int:
    """Σ d over the scales >= start: token-block evaluations (N L at a standard scale)."""
    return sum(
        n * num_layers if table is None else int(table.depth_by_rank.sum())
        for i, (table, n) in enumerate(zip(tables, sizes, strict=True))
        if i >= start
    )


@dataclass(frozen=True)
class BudgetSolution:
    """DepthVAR setting whose flexible-zone compute equals a VARiant subnet's (see budget_for_depth)."""

    config: DepthVARConfig  # reference_scale = bridge - 1, target_fraction = f
    constants: tuple[float | None, ...]  # c_i per scale (None: standard scale, or full depth when f is infeasible)
    target_fraction: float  # d / L
    achieved_fraction: float  # realised token-layer fraction over the flexible zone
    token_layers: int  # realised Σ d over the flexible zone
    target_token_layers: int  # d * Σ_{i >= bridge} N_i


def budget_for_depth(
    patch_nums: Sequence[int | Sequence[int]],
    num_layers: int,
    bridge: int,
    depth: int,
    cfg: DepthVARConfig | None = None,
) -> BudgetSolution:
    """Equal-compute DepthVAR for a VARiant subnet: first `bridge` scales at full depth, later scales `depth` of L.

    Project decision [D; the paper only defines a reference scale R]: keep the schedule machinery of DV2-DV6 but
    accelerate exactly the flexible-zone scales (R = bridge - 1) and give them one common target area f instead of
    N_R/N_i. f is solved (`match_budget`) so that the realised integer token-layer count over the flexible zone (ordinal
    ranks, so the same for every image) equals depth * Σ N_i; when no f hits it exactly (one f moves several tokens at
    once) the closest count is taken, ties to the cheaper one. depth = L gives full depth. match_discrete_budget is
    switched off in the returned config: f already matches the discrete budget, jointly over the zone.
    """
    cfg = DepthVARConfig() if cfg is None else cfg
    if not 1 <= bridge < len(patch_nums):
        raise ValueError(f"bridge={bridge}; expected 1 <= bridge < {len(patch_nums)} (scale 0 has no previous scale)")
    if not 1 <= depth <= num_layers:
        raise ValueError(f"depth={depth}; expected 1 <= depth <= {num_layers}")
    sizes = [h * w for h, w in map(_hw, patch_nums)]
    target = depth * sum(sizes[bridge:])
    base = replace(cfg, reference_scale=bridge - 1, match_discrete_budget=False)

    def realised(f: float) -> float:
        tables = rank_tables(patch_nums, num_layers, replace(base, target_fraction=f))
        return float(_token_layers(tables, sizes, num_layers, bridge))

    f_max = max_target_area(base)  # at f_max every flexible scale runs at full depth
    f = f_max if depth == num_layers else match_budget(realised, float(target), 1e-12, f_max,
                                                       resolution=AREA_RESOLUTION)
    solved = replace(base, target_fraction=f)
    tables = rank_tables(patch_nums, num_layers, solved)
    achieved = _token_layers(tables, sizes, num_layers, bridge)
    return BudgetSolution(
        config=solved,
        constants=tuple(None if t is None else t.c for t in tables),
        target_fraction=depth / num_layers,
        achieved_fraction=achieved / (num_layers * sum(sizes[bridge:])),
        token_layers=achieved,
        target_token_layers=target,
    )


# ----------------------------------------------------------------------------------------------------------------
# Similarity restoration (DV13)
# ----------------------------------------------------------------------------------------------------------------


def anchor_lines(size: int, window: int = 5) -> list[int]:
    """Anchor rows (or columns): {0, w, 2w, ...} ∪ {size-1}, deduplicated (DV13 step 1)."""
    return sorted(set(range(0, size, window)) | {size - 1})


@lru_cache(maxsize=64)
def anchor_candidates(h: int, w: int, window: int = 5, num: int = 4,
                      device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(anchors (A,), candidates (N, min(num, A))): anchor raster indices, and per token its `num` nearest anchors.

    Candidates are indices into `anchors`, nearest first by squared grid distance, ties by anchor raster order (DV13
    step 2). [D] "The corners of the token's anchor cell" would be a shorter description; the distance rule (the public
    SparseVAR port's) is what is implemented — the two differ only next to a narrow border cell (e.g. 8x8 token (6,4)
    gets (5,7) before (5,0)). Built on the CPU and, for `device`, copied there once (cached): treat as read-only.
    """
    if device is not None and torch.device(device) != torch.device("cpu"):
        return tuple(t.to(device) for t in anchor_candidates(h, w, window, num))
    rows, cols = anchor_lines(h, window), anchor_lines(w, window)
    anchors = torch.tensor([r * w + c for r in rows for c in cols])
    ar, ac = anchors // w, anchors % w
    tokens = torch.arange(h * w)
    dist = (tokens[:, None] // w - ar[None]) ** 2 + (tokens[:, None] % w - ac[None]) ** 2
    candidates = torch.sort(dist, dim=1, stable=True).indices[:, : min(num, len(anchors))]
    return anchors, candidates


def restore_similar(
    hidden: Tensor,
    depth: Tensor,
    features: Tensor,
    window: int = 5,
    threshold: float = 0.9,
) -> tuple[Tensor, Tensor]:
    """Similarity restoration of never-computed tokens (DV13): copy an anchor's final hidden state to d = 0 tokens.

    Args:
        hidden: (R, N, C) final hidden states (after block L-1, before the head), R = B or 2B (CFG rows).
        depth: d, (B, h, w) — it gives the map size.
        features: (B, N, V) similarity features at the current size: the previous scale's post-CFG logits
            (cloned before in-place sampling), nearest-upsampled (upsample_tokens(..., 'nearest')).
        window: anchor spacing; threshold: restore only when the best cosine similarity is strictly greater.

    Returns:
        (hidden', source): source (B, N) is the raster index each token's state came from (itself when not
        restored); both CFG rows of a sample use the same source. Restored = source != arange(N). With
        restore_weight='anchor' the code weight is score.flatten(1).gather(1, source); 'own' [D] keeps S.

    [D] Candidates are a token's 4 nearest anchors (anchor_candidates); only those with d >= 1 are admissible, the
    best admissible one by cosine similarity (first in candidate order on ties) is used. A target without an
    admissible candidate keeps its proxy state. Features are compared in float32 at least.
    """
    batch, h, w = depth.shape
    n = h * w
    anchors, cand = anchor_candidates(h, w, window, device=depth.device)
    acc = torch.float64 if features.dtype == torch.float64 else torch.float32
    unit = F.normalize(features.to(acc), dim=-1)
    sim = unit @ unit[:, anchors].transpose(1, 2)  # (B, N, A): each token against every anchor, cheap
    cand_sim = sim.gather(2, cand.expand(batch, n, -1))  # (B, N, K)
    d = depth.reshape(batch, n)
    admissible = d[:, anchors][:, cand] >= 1  # (B, N, K)
    best_sim, best = cand_sim.masked_fill(~admissible, -math.inf).max(dim=-1)
    restore = (d == 0) & (best_sim > threshold)  # -inf (no admissible anchor) never passes
    tokens = torch.arange(n, device=depth.device).expand(batch, n)
    source = torch.where(restore, anchors[cand][tokens, best], tokens)
    rows = hidden.shape[0]
    if rows % batch:
        raise ValueError(f"{rows} hidden rows do not match a batch of {batch}")
    index = source.repeat(rows // batch, 1)  # rows [0,B) cond, [B,2B) uncond share the sample's choice (DV15)
    return hidden.gather(1, index[..., None].expand_as(hidden)), source
