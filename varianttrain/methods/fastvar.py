"""FastVAR (cached token pruning, arXiv 2503.23367) ported to class-conditional VAR as a strategy of the one sampler.

What the official code does (csguoh/FastVAR `Infinity/infinity/models/fastvar_utils.py`, `compute_merge`): at a
few large scales, inside the middle blocks only (Infinity: blocks 3..27 of 32), every sub-layer (self-attention,
cross-attention, FFN) runs on the tokens whose *input* has the largest squared L2 distance to the token map's
mean; pruned tokens take that sub-layer's output change cached at one earlier scale (24x24), area-resized; only
kept tokens enter attention and the KV cache. Infinity prunes 40 % at 32x32 and 50 % at 40x40 and drops the last
two scales.

This port (decisions and deviations, each forced by or chosen for the sampler's `ScalePlan` and hooks):

* Block granularity, not sub-layer granularity: a pruned token skips the whole block (attention + FFN) and takes
  x_in + area_resize(Δ_cache^ℓ), where Δ_cache^ℓ = block ℓ's output change at the cache scale. VAR blocks have no
  cross-attention; the sampler's per-token masks select tokens per block, not per sub-layer.
* One keep set per scale for all pruned blocks, decided before the scale runs: `ScalePlan.token_mask_BDl` is fixed
  when `scale_plan(k)` is called, before the scale's input exists for the method. The pivotal score is therefore
  the squared distance to the mean of the *previous scale's* hidden state entering the first pruned block,
  bilinearly upsampled to the current size (the official code scores each sub-layer's own current input).
  A faithful per-block score needs a sampler/model extension (a per-block token selector called inside
  `forward_scale`); see docs/METHODS.md.
* CFG: one keep set per image, shared by its conditional and unconditional rows, ranked on the mean of both rows'
  scores (the official code selects per row). Same rule as DepthVAR's DV15 (docs/METHODS.md), so no padding is
  needed.
* Ties in the score: stable sort, raster order first.
* No scale is skipped: the optional "skip the last scales" of FastVAR* is not appropriate for VAR-d30, whose last
  scale is the full 16x16 latent (Infinity's last two scales are 48x48 and 64x64 refinements).
* Defaults: pruned blocks [3, D-3] inclusive (three blocks left out at each end; Infinity's official range 3..27
  of 32 is [3, D-5]); models with D < 8 use [1, D-2]. Cache scale = the scale before the first pruned one.

Budget (`build_fastvar`): the pruned scales are the budget's flexible zone (scales >= bridge N, where VARiant saves
its compute), the cache scale is N-1 (the last full-depth bridge scale), and one prune ratio p for all pruned scales
(keep N_k - floor(p N_k) tokens, the official rounding) is solved (`match_budget`) so that the sampler's counted
FLOPs come closest to `budget.variant_flops` (ties: the cheaper). With the default block range the flexible zone
cannot go below (D - 25)/D of its depth (5 of 30 blocks always run): budgets below that (VAR-d30: d = 4, 2) get
p = 1 and exceed the target; the method's `budget_match` says so (ratio and note), see docs/METHODS.md. Explicit
knobs win: ``prune_scales``, ``prune_ratios`` (one float or one per pruned scale), ``cache_scale``,
``block_range``, ``restore_upsample``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from varianttrain.methods.common import capacity_plan, counted_flops, match_budget, upsample_tokens
from varianttrain.methods.spec import (
    MethodOptions,
    MethodSpec,
    check_choice,
    check_int,
    check_int_list,
    is_number,
    knob_error,
)
from varianttrain.models.depth_plan import FULL_SCALE, DepthPlan, ScalePlan
from varianttrain.models.flops import FlopCounter
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingContext, SamplingMethod

KNOBS = ("prune_scales", "prune_ratios", "cache_scale", "block_range", "restore_upsample")
UPSAMPLE_MODES = ("area", "bilinear", "nearest")


def default_block_range(depth: int) -> tuple[int, int]:
    """Inclusive range of blocks that prune: [3, D-3] (VAR-d30: 3..27), or [1, D-2] for models with D < 8."""
    if depth >= 8:
        return 3, depth - 3
    return min(1, depth - 1), max(min(1, depth - 1), depth - 2)


def keep_count(num_tokens: int, ratio: float) -> int:
    """Tokens kept when a fraction `ratio` is pruned: N - int(N * ratio), as the official code rounds."""
    return num_tokens - int(num_tokens * ratio)


class FastVARMethod(SamplingMethod):
    """Cached token pruning at chosen scales (see the module docstring for every deviation from the official code).

    Args:
        var: the model (shape only).
        keep: {scale index: tokens kept in the pruned blocks}; scales not listed run in full.
        cache_scale: the full scale whose per-block output changes fill the pruned tokens (< every pruned scale).
        block_range: inclusive (first, last) block that prunes.
        restore_upsample: resize of the cached changes to the current size ('area' = official).
    """

    name = "fastvar"

    def __init__(self, var: VAR, keep: dict[int, int], cache_scale: int, block_range: tuple[int, int],
                 restore_upsample: str = "area"):
        self.depth, self.patch_nums = var.depth, tuple(var.patch_nums)
        lo, hi = block_range
        if not 0 <= lo <= hi < self.depth:
            raise ValueError(f"fastvar: block_range={list(block_range)} outside 0..{self.depth - 1}")
        if restore_upsample not in UPSAMPLE_MODES:
            raise ValueError(f"fastvar: restore_upsample={restore_upsample!r}; expected one of {UPSAMPLE_MODES}")
        K = len(self.patch_nums)
        self.keep = {}
        for k, n in keep.items():
            if not 0 < k < K or not 0 <= n <= self.patch_nums[k] ** 2:
                raise ValueError(f"fastvar: cannot keep {n} tokens at scale {k} (patch_nums {self.patch_nums})")
            if n < self.patch_nums[k] ** 2:
                self.keep[k] = int(n)
        if self.keep and not 0 <= cache_scale < min(self.keep):
            raise ValueError(f"fastvar: cache_scale={cache_scale} must precede the first pruned scale "
                             f"{min(self.keep)}")
        self.cache_scale = cache_scale
        self.block_range = (lo, hi)
        self.pruned_blocks = tuple(range(lo, hi + 1))
        self.restore_upsample = restore_upsample
        self._full_blocks = tuple(b for b in range(self.depth) if not lo <= b <= hi)
        self._counts = [None if c is None else tuple(c) for c in self.token_counts()]
        self._device_full: dict[str, torch.Tensor] = {}
        self._reset()

    def _reset(self) -> None:
        self._k = -1
        self._cache: dict[int, torch.Tensor] = {}  # block -> Δ at the cache scale (rows, N_cache, C)
        self._feature: torch.Tensor | None = None  # previous scale's input of the first pruned block
        self._feature_next: torch.Tensor | None = None

    def begin(self, ctx: SamplingContext) -> None:
        if ctx.var.depth != self.depth or tuple(ctx.var.patch_nums) != self.patch_nums:
            raise ValueError(f"fastvar was built for depth {self.depth} / patch_nums {self.patch_nums}")
        self._reset()
        key = str(ctx.device)
        if key not in self._device_full:  # which blocks never prune, as a (depth,) mask: one host copy per device
            full_D = torch.zeros(self.depth, dtype=torch.bool)
            full_D[list(self._full_blocks)] = True
            self._device_full[key] = full_D.to(ctx.device)
        self._full_D = self._device_full[key]

    # ------------------------------------------------------------------ hooks
    def scale_plan(self, scale: int) -> ScalePlan:
        self._k = scale
        self._feature, self._feature_next = self._feature_next, None
        if scale not in self.keep:
            return FULL_SCALE
        if not self._cache:
            raise RuntimeError(f"fastvar: nothing cached at scale {self.cache_scale} before scale {scale}")
        n_keep = self.keep[scale]
        if n_keep == 0:  # every token pruned: the blocks of the range are skipped, `skip_fill` fills them
            return ScalePlan(blocks=self._full_blocks)
        pn = self.patch_nums[scale]
        prev = self.patch_nums[scale - 1]
        feature = upsample_tokens(self._feature, (prev, prev), (pn, pn), "bilinear").float()
        score = (feature - feature.mean(dim=1, keepdim=True)).square().sum(-1)  # pivotal score (rows, N)
        images = score.shape[0] // 2
        score = 0.5 * (score[:images] + score[images:])  # one keep set per image (CFG rows share it)
        order = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :n_keep]
        keep_Bl = torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
        mask = keep_Bl[:, None, :] | self._full_D[None, :, None]  # the blocks outside the range run every token
        return ScalePlan(token_mask_BDl=mask, token_counts=self._counts[scale])

    @property
    def block_hook(self):
        k = self._k
        if k == self.cache_scale or k + 1 in self.keep:
            return self._hook
        return None

    @property
    def skip_fill(self):
        """At a pruned scale, pruned tokens take x_in + the cached change of the block, resized."""
        return self._fill if self._k in self.keep else None

    def _fill(self, block: int, x_in: torch.Tensor) -> torch.Tensor:
        src, pn = self.patch_nums[self.cache_scale], self.patch_nums[self._k]
        cached = upsample_tokens(self._cache[block], (src, src), (pn, pn), self.restore_upsample)
        return x_in + cached.to(x_in.dtype)

    def _hook(self, block: int, x_in: torch.Tensor, x_out: torch.Tensor, ran_Bl: torch.Tensor | None) -> torch.Tensor:
        k = self._k
        if block == self.block_range[0] and k + 1 in self.keep:
            self._feature_next = x_in  # scores the next scale's tokens
        if k == self.cache_scale and block in self.pruned_blocks:
            self._cache[block] = x_out - x_in
        return x_out

    def code_weights(self, scale: int) -> torch.Tensor | None:
        if scale == len(self.patch_nums) - 1:  # last hook of the call: release the cached block changes
            self._cache, self._feature, self._feature_next = {}, None, None
        return None

    def kv_capacity_plan(self) -> DepthPlan | None:
        return capacity_plan(self.depth, self.patch_nums, self.token_counts())

    # ------------------------------------------------------------------ cost
    def token_counts(self) -> list[list[int] | None]:
        out: list[list[int] | None] = []
        for k, pn in enumerate(self.patch_nums):
            if k not in self.keep:
                out.append(None)
            else:
                out.append([self.keep[k] if b in self.pruned_blocks else pn * pn for b in range(self.depth)])
        return out

    def expected_flops(self, var: VAR) -> FlopCounter:
        """Closed-form FLOPs of one image (equals the sampler's count)."""
        return counted_flops(var, self.token_counts())

    def describe(self) -> str:
        if not self.keep:
            return "fastvar: no pruning (full model)"
        kept = {self.patch_nums[k]: f"{n}/{self.patch_nums[k] ** 2}" for k, n in sorted(self.keep.items())}
        return (f"fastvar: keep {kept} in blocks {list(self.block_range)}, cache at "
                f"{self.patch_nums[self.cache_scale]}x{self.patch_nums[self.cache_scale]}")


# ----------------------------------------------------------------------------------------------------------------
# Factory and budget
# ----------------------------------------------------------------------------------------------------------------


def _ratio_ok(value: Any) -> bool:
    return is_number(value) and 0.0 <= value <= 1.0


def check_knobs(knobs: Mapping[str, Any]) -> None:
    """Every knob value that can be judged without the model (scale and block limits need its shape)."""
    check_int_list("fastvar", knobs, "prune_scales", 1)
    if "prune_scales" in knobs and not knobs["prune_scales"]:
        raise knob_error("fastvar", "prune_scales", knobs["prune_scales"], "at least one scale")
    if "prune_ratios" in knobs:
        value = knobs["prune_ratios"]
        ok = _ratio_ok(value) or (isinstance(value, (list, tuple)) and all(_ratio_ok(v) for v in value))
        if ok and isinstance(value, (list, tuple)) and "prune_scales" in knobs:
            ok = len(value) == len(knobs["prune_scales"])
        if not ok:
            raise knob_error("fastvar", "prune_ratios", value, "one ratio in [0, 1] or one per pruned scale")
    check_int("fastvar", knobs, "cache_scale", 0)
    check_int_list("fastvar", knobs, "block_range", 0, length=2)
    if "block_range" in knobs and knobs["block_range"][0] > knobs["block_range"][1]:
        raise knob_error("fastvar", "block_range", knobs["block_range"], "an inclusive (first, last) block pair")
    check_choice("fastvar", knobs, "restore_upsample", UPSAMPLE_MODES)


def _ratios(value: float | Sequence[float], scales: Sequence[int]) -> list[float]:
    ratios = [float(value)] * len(scales) if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(ratios) != len(scales):
        raise ValueError(f"method_options.fastvar.prune_ratios={value!r}: one ratio in [0, 1] or one per pruned "
                         f"scale {list(scales)}")
    return ratios


def solve_prune_ratio(var: VAR, scales: Sequence[int], cache_scale: int, block_range: tuple[int, int],
                      target: int) -> float:
    """The common prune ratio whose counted FLOPs come closest to `target` (ties: the cheaper, i.e. larger, p).

    FLOPs fall monotonically (in steps) as p grows.
    """

    def flops(p: float) -> int:
        keep = {k: keep_count(var.patch_nums[k] ** 2, p) for k in scales}
        return FastVARMethod(var, keep, cache_scale, block_range).expected_flops(var).total

    return match_budget(flops, target, 0.0, 1.0, increasing=False)


def build_fastvar(var: VAR, options: MethodOptions) -> FastVARMethod:
    """Registry factory: the budget rule of the module docstring, explicit knobs first."""
    knobs, budget = options.knobs, options.budget
    K = len(var.patch_nums)
    scales = list(knobs.get("prune_scales", range(max(budget.bridge_scales, 1), K)))
    cache_scale = knobs.get("cache_scale", min(scales, default=K) - 1)
    block_range = tuple(int(b) for b in knobs.get("block_range", default_block_range(var.depth)))
    upsample = knobs.get("restore_upsample", "area")
    if "prune_ratios" in knobs:
        ratios = _ratios(knobs["prune_ratios"], scales)
        note = "explicit prune ratios: not budget-matched"
    elif budget.is_full or not scales:
        ratios, note = [0.0] * len(scales), "full depth (d = D or no flexible zone): no pruning"
    else:
        p = solve_prune_ratio(var, scales, cache_scale, block_range, budget.variant_flops(var).total)
        ratios, note = [p] * len(scales), f"prune ratio {p:.4f} matched to the FLOPs of VARiant d={budget.depth}"
    keep = {k: keep_count(var.patch_nums[k] ** 2, r) for k, r in zip(scales, ratios, strict=True)}
    method = FastVARMethod(var, keep, cache_scale, block_range, upsample)
    flops = method.expected_flops(var)
    if keep and not any(keep.values()) and flops.total > budget.variant_flops(var).total:
        note = (f"out of reach: with every token of blocks {list(block_range)} pruned (prune ratio 1), the other "
                f"blocks alone exceed the FLOPs of VARiant d={budget.depth}; only a wider block_range goes lower")
    method.budget_match = budget.match(var, flops, note)
    return method


METHOD = MethodSpec(
    "fastvar", build_fastvar, knobs=KNOBS, check_values=check_knobs,
    help="FastVAR: prune tokens inside the middle blocks at the flexible-zone scales, pruned tokens take block "
         "changes cached at the last bridge scale; the prune ratio matches the budget's FLOPs")
