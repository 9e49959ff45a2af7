"""The toolbox shared by the accelerators: the budget solver, their FLOP count, KV sizing and token helpers.

Every method module takes what it shares from here (never from another method module):

* `match_budget`: the one solver that turns "match the budget's FLOPs" into a knob value;
* `counted_flops`: closed-form FLOPs of a per-block token-count table, exactly as the sampler counts them;
* `capacity_plan`: a static plan that sizes the KV caches for such a table (built once per table);
* `upsample_tokens`: token-map resizing (the proxies of tokens that skip a block, rank and feature maps).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from varianttrain.models.depth_plan import FULL_SCALE, DepthPlan, ScalePlan
from varianttrain.models.flops import FlopCounter, token_sampling_flops
from varianttrain.models.var import VAR

TokenCounts = Sequence[Sequence[int] | None]  # per scale: tokens that run each block (None: every token)


# ----------------------------------------------------------------------------------------------- budget solver
def match_budget(cost: Callable[[float], float], target: float, lo: float, hi: float, *, increasing: bool = True,
                 ties: Literal["cheaper", "dearer"] = "cheaper", resolution: float = 0.0) -> float:
    """The knob value x in [lo, hi] whose cost comes closest to `target`.

    `cost` is a monotone step function of x -- nondecreasing, or nonincreasing with ``increasing=False`` -- such as
    the counted FLOPs of a plan built from one knob. The plateau (an interval of equal cost) closest to the target
    wins; when the two plateaus around the target are equally close, `ties` picks the cheaper (default) or the
    dearer one. Returns the centre of the winning plateau, so that rounding of x elsewhere cannot move it onto a
    neighbouring step.

    Bisection runs down to adjacent floats, or until the bracket is narrower than `resolution`: a cost computed in
    floating point can have plateaus only one float wide at a step, which a coarser resolution steps over (a few
    hundred cost evaluations at most either way).
    """
    if ties not in ("cheaper", "dearer"):
        raise ValueError(f"ties={ties!r}; expected 'cheaper' or 'dearer'")

    def reached(x: float, value: float) -> bool:  # False on [lo, a), True on [a, hi]: x is at or past `value`
        return cost(x) >= value if increasing else cost(x) <= value

    def passed(x: float, value: float) -> bool:  # x is strictly past `value`
        return cost(x) > value if increasing else cost(x) < value

    def boundary(pred: Callable[[float], bool], a: float, b: float) -> tuple[float, float]:
        # pred(a) False, pred(b) True, monotone: shrink to adjacent floats
        for _ in range(200):
            mid = 0.5 * (a + b)
            if mid in (a, b) or b - a <= resolution:
                break
            a, b = (a, mid) if pred(mid) else (mid, b)
        return a, b

    if reached(lo, target):  # even the lo end is at or past the target
        value, inside = cost(lo), lo
    elif not passed(hi, target):  # even the hi end has not passed it
        value, inside = cost(hi), hi
    else:
        before, after = boundary(lambda x: reached(x, target), lo, hi)
        v_before, v_after = cost(before), cost(after)
        gap_before, gap_after = abs(v_before - target), abs(v_after - target)
        if gap_before == gap_after:
            take_after = (v_after < v_before) == (ties == "cheaper")
        else:
            take_after = gap_after < gap_before
        value, inside = (v_after, after) if take_after else (v_before, before)
    left = lo if reached(lo, value) else boundary(lambda x: reached(x, value), lo, inside)[1]
    right = hi if not passed(hi, value) else boundary(lambda x: passed(x, value), inside, hi)[0]
    mid = 0.5 * (left + right)
    return mid if cost(mid) == value else inside


# --------------------------------------------------------------------------------------- FLOPs and KV sizing
def counted_flops(var: VAR, counts: TokenCounts, rows: Sequence[int] | None = None) -> FlopCounter:
    """FLOPs of one image exactly as `generate` counts them, for per-block token counts (closed form).

    Args:
        counts: per scale k, `counts[k][b]` = tokens that run block b (None: all N_k tokens run every block).
        rows: per scale, the rows one image occupies (2 with CFG, 1 once the guidance branch is dropped).
    """
    table = [[pn * pn] * var.depth if c is None else list(c) for pn, c in zip(var.patch_nums, counts, strict=True)]
    return token_sampling_flops(var.C, var.V, var.Cvae, var.patch_nums, table, rows=2 if rows is None else rows)


def capacity_plan(depth: int, patch_nums: Sequence[int], counts: TokenCounts) -> DepthPlan:
    """A static `DepthPlan` whose per-block token totals are `counts` (for `SamplingMethod.kv_capacity_plan`).

    Only the counts matter to `VAR.new_kv_caches` (the plan carries them as `token_counts`, so sizing reads no
    tensor); the synthetic masks mark the first n tokens. Cached per (depth, pyramid, counts): a method asks for
    its plan at every sampling call, and building it costs a few hundred small tensor operations at VAR-d30.
    """
    table = tuple(None if c is None else tuple(int(n) for n in c) for c in counts)
    return _capacity_plan(depth, tuple(patch_nums), table)


@lru_cache(maxsize=256)
def _capacity_plan(depth: int, patch_nums: tuple[int, ...], counts: tuple[tuple[int, ...] | None, ...]) -> DepthPlan:
    scales = []
    for k, pn in enumerate(patch_nums):
        if counts[k] is None:
            scales.append(FULL_SCALE)
            continue
        positions = torch.arange(pn * pn)
        mask_1Dl = torch.stack([positions < n for n in counts[k]])[None]
        scales.append(ScalePlan(token_mask_BDl=mask_1Dl, token_counts=counts[k]))
    return DepthPlan(depth, patch_nums, scales)


# ----------------------------------------------------------------------------------------------- token helpers
def upsample_tokens(tokens_RNC: torch.Tensor, src_hw: tuple[int, int], dst_hw: tuple[int, int],
                    mode: str = "bilinear") -> torch.Tensor:
    """(R, N_src, C) token maps -> (R, N_dst, C); bilinear uses align_corners=False (no antialias)."""
    rows, _, channels = tokens_RNC.shape
    grid = tokens_RNC.transpose(1, 2).reshape(rows, channels, *src_hw)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(grid, size=tuple(dst_hw), mode=mode, **kwargs).flatten(2).transpose(1, 2)
