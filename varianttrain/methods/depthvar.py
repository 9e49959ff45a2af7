"""DepthVAR (per-token dynamic depth, arXiv 2604.17286) as a strategy of the one sampler.

The math (scores, depths, masks, restoration, budgets) lives in `depthvar_schedule`; this module wires
it into `varianttrain.sampling.sampler.generate` through the `SamplingMethod` hooks, following the DV1 loop of
the DepthVAR port in docs/METHODS.md (DV numbers below refer to its steps):

* scales k <= R run at full depth; the last one that precedes an accelerated scale records Δ^ℓ = x_out - x_in for
  every block (`block_hook`, DV12);
* an accelerated scale k > R gets a `ScalePlan` whose `token_mask_BDl` is the layer-major mask of `depth_maps`,
  ranked on the previous scale's Δ (DV2-DV9), and its per-block token counts (the same for every image with
  ordinal ranks, so the model needs no host sync); the model gathers the running tokens per block and omits the
  others from attention and from that block's KV cache (DV11); `skip_fill` gives a skipped token the proxy
  x_in + up(Δ_prev^ℓ) instead of its identity (bilinear, DV10) and the hook records the new Δ for the next scale
  (DV12);
* `before_head` applies the similarity restoration of d = 0 tokens on the previous scale's guided logits (DV13);
* `code_weights` returns the continuous score S for code blending (pre-φ, DV14).

Every sample of the batch is sampled at every scale (DV15), so RNG use equals the baseline's.

Budget (`build_depthvar`): ``reference_scale`` (knob or `DepthBudget.reference_scale`) is the paper mode
(A_i = N_R / N_i); otherwise ``--depth d`` is met with `budget_for_depth` (equal token-layer count to the VARiant
d subnet over its flexible zone) or, with ``budget_match: flops``, with one target fraction solved on the sampler's
counted FLOPs. At VAR-d30 token-layer matching leaves the FLOPs 0.8-1.4 % under the VARiant target (attention is
cheaper when the tokens spread over all blocks' smaller KV caches), see docs/METHODS.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

import torch

from varianttrain.methods.common import capacity_plan, counted_flops, match_budget, upsample_tokens
from varianttrain.methods.depthvar_schedule import (
    DepthMaps,
    DepthVARConfig,
    budget_for_depth,
    depth_maps,
    max_target_area,
    rank_tables,
    restore_similar,
)
from varianttrain.methods.spec import MethodOptions, MethodSpec, check_choice, knob_error
from varianttrain.models.depth_plan import FULL_SCALE, DepthPlan, ScalePlan
from varianttrain.models.flops import FlopCounter
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingContext, SamplingMethod

# ----------------------------------------------------------------------------------------------------------------
# The method
# ----------------------------------------------------------------------------------------------------------------


class DepthVARMethod(SamplingMethod):
    """DepthVAR through the sampler hooks (docs/METHODS.md DV1). One instance serves any number of `generate` calls.

    Args:
        var: the model (only its shape is read: depth, patch_nums).
        config: every DepthVAR option (`DepthVARConfig`).
        unit_score: test hook: force S ≡ 1 at the accelerated scales (every token runs every block through the
            gather/scatter path, no restoration, blending by 1); must reproduce the full model exactly.

    State across scales of one call (reset in `begin`): the previous scale's Δ per block (`deltas_prev`), the
    previous scale's guided logits (restoration), the current scale's `DepthMaps`. The per-scale rank tables
    (`tables`, `depth_schedule.ScaleRankTable`) are fixed at construction.
    """

    name = "depthvar"

    def __init__(self, var: VAR, config: DepthVARConfig, unit_score: bool = False):
        _check_supported(config, var.depth)
        self.config = config
        self.unit_score = unit_score
        self.depth = var.depth
        self.patch_nums = tuple(var.patch_nums)
        self.tables = rank_tables(self.patch_nums, self.depth, config)
        # A table with c None (infeasible budget) runs standard inference (S = 1, DV6); with unit_score every
        # scale > R goes through the masked path.
        self.accelerated = frozenset(k for k, t in enumerate(self.tables)
                                     if t is not None and (unit_score or not t.full_depth))
        self.recorded = frozenset(k - 1 for k in self.accelerated)  # scales whose Δ the next scale needs
        self._counts = [None if c is None else tuple(c) for c in self.token_counts()]
        self._device_tables: dict[str, list] = {}
        self._reset()

    # ------------------------------------------------------------------ per-call state
    def _reset(self) -> None:
        self._k = -1
        self.deltas_prev: list[torch.Tensor] | None = None
        self._deltas_cur: list[torch.Tensor | None] | None = None
        self._logits_prev: torch.Tensor | None = None
        self.maps: DepthMaps | None = None
        self._source: torch.Tensor | None = None

    def begin(self, ctx: SamplingContext) -> None:
        if ctx.var.depth != self.depth or tuple(ctx.var.patch_nums) != self.patch_nums:
            raise ValueError(f"depthvar was built for depth {self.depth} / patch_nums {self.patch_nums}, not for "
                             f"{ctx.var.config.describe()}")
        self._reset()
        key = str(ctx.device)
        if key not in self._device_tables:  # move the rank tables once per device (DV11: no per-step copies)
            self._device_tables[key] = [None if t is None else t.to(ctx.device) for t in self.tables]
        self._tables = self._device_tables[key]

    # ------------------------------------------------------------------ hooks
    def scale_plan(self, scale: int) -> ScalePlan:
        self._k = scale
        self.deltas_prev = self._deltas_cur if scale - 1 in self.recorded else None
        self._deltas_cur = [None] * self.depth if scale in self.recorded else None
        self.maps, self._source = None, None
        if scale not in self.accelerated:
            return FULL_SCALE
        if self.deltas_prev is None or any(d is None for d in self.deltas_prev):
            raise RuntimeError(f"depthvar: no block changes recorded at scale {scale - 1}; was the block hook run?")
        if self.unit_score:
            self.maps = _unit_maps(self.deltas_prev[0], self._tables[scale].hw, self.depth)
        else:
            self.maps = depth_maps(self.deltas_prev, self._tables[scale], self.config)
        # Ordinal ranks give every image the table's per-block counts: the model gathers without a host sync.
        counts = self._counts[scale] if self.unit_score or self.config.rank_ties == "ordinal" else None
        return ScalePlan(token_mask_BDl=self.maps.mask, token_counts=counts)

    @property
    def block_hook(self):
        """Active only where Δ is recorded for the next scale: other scales pay nothing."""
        return self._hook if self._k in self.recorded else None

    @property
    def skip_fill(self):
        """At an accelerated scale, tokens that skip a block take the proxy x_in + up(Δ_prev) (DV10)."""
        return self._fill if self.maps is not None else None

    def _fill(self, block: int, x_in: torch.Tensor) -> torch.Tensor:
        table = self._tables[self._k]
        proxy = upsample_tokens(self.deltas_prev[block], table.prev_hw, table.hw, self.config.proxy_upsample)
        return x_in + proxy.to(x_in.dtype)

    def _hook(self, block: int, x_in: torch.Tensor, x_out: torch.Tensor, ran_Bl: torch.Tensor | None) -> torch.Tensor:
        self._deltas_cur[block] = x_out - x_in  # computed change, or the proxy change of masked tokens (DV12)
        return x_out

    def before_head(self, scale: int, x_BlC: torch.Tensor) -> torch.Tensor:
        if self.maps is None or not self.config.restoration or self.unit_score:
            return x_BlC
        table = self._tables[scale]
        features = upsample_tokens(self._logits_prev, table.prev_hw, table.hw, "nearest")  # DV13 step 3
        x_BlC, self._source = restore_similar(x_BlC, self.maps.depth, features, self.config.restore_window,
                                              self.config.restore_threshold)
        return x_BlC

    def on_guided_logits(self, scale: int, logits_BlV: torch.Tensor) -> None:
        # The sampler filters the logits in place afterwards: keep a clone (DV12).
        keep = scale + 1 in self.accelerated and self.config.restoration and not self.unit_score
        self._logits_prev = logits_BlV.clone() if keep else None

    def code_weights(self, scale: int) -> torch.Tensor | None:
        if scale == len(self.patch_nums) - 1:  # last hook of the call: release Δ and logits (GBs at batch 64)
            self.deltas_prev, self._deltas_cur, self._logits_prev = None, None, None
        if self.maps is None or not self.config.blending:
            return None
        score = self.maps.score.flatten(1)  # continuous S (DV14), float64; the sampler casts
        if self.config.restore_weight == "anchor" and self._source is not None:
            score = score.gather(1, self._source)  # restored tokens take their anchor's S (DV13 step 6)
        return score

    def kv_capacity_plan(self) -> DepthPlan | None:
        return capacity_plan(self.depth, self.patch_nums, self.token_counts())

    # ------------------------------------------------------------------ cost
    def token_counts(self) -> list[list[int] | None]:
        """Per scale the per-block token counts (ordinal ranks make them image-independent, DV3)."""
        out: list[list[int] | None] = []
        for k, table in enumerate(self.tables):
            if k not in self.accelerated:
                out.append(None)
            elif self.unit_score:
                out.append([self.patch_nums[k] ** 2] * self.depth)
            else:
                out.append(list(table.counts))
        return out

    def expected_flops(self, var: VAR) -> FlopCounter:
        """Closed-form FLOPs of one image (equals the sampler's count with ordinal ranks)."""
        return counted_flops(var, self.token_counts())

    def describe(self) -> str:
        acc = sorted(self.accelerated)
        if not acc:
            return "depthvar: no accelerated scale (full model)"
        c = self.config
        return (f"depthvar: R={c.reference_scale}, accelerated scales {acc}, target_fraction={c.target_fraction}, "
                f"{c.schedule} k={c.sigmoid_k} eta={c.eta}, ref layers {list(c.ref_layer_range)}")


def _unit_maps(like: torch.Tensor, hw: tuple[int, int], depth: int) -> DepthMaps:
    batch = like.shape[0] // 2  # CFG rows
    h, w = hw
    score = torch.ones(batch, h, w, dtype=torch.float64, device=like.device)
    full = torch.full((batch, h, w), depth, dtype=torch.long, device=like.device)
    mask = torch.ones(batch, depth, h * w, dtype=torch.bool, device=like.device)
    return DepthMaps(score, full, mask, None)


def _check_supported(config: DepthVARConfig, depth: int) -> None:
    """What only the model can tell: the reference layers must exist."""
    if config.ref_layer_range[1] >= depth:
        raise ValueError(f"depthvar: ref_layer_range={list(config.ref_layer_range)} outside the model's "
                         f"{depth} blocks")


# ----------------------------------------------------------------------------------------------------------------
# Factory and budget
# ----------------------------------------------------------------------------------------------------------------

CONFIG_KNOBS: tuple[str, ...] = tuple(f.name for f in fields(DepthVARConfig))
EXTRA_KNOBS: tuple[str, ...] = ("unit_score", "budget_match")
BUDGET_MATCH = ("token_layers", "flops")
REFERENCE_DEPTH = 30  # the port's defaults (ref_layer_range (3, 18)) are for VAR-d30 (DV16)


def default_layer_range(depth: int) -> tuple[int, int]:
    """The default [3, 18] of 30 blocks rescaled to `depth` blocks, as [3, 18] rescales the paper's 3-19 (DV16)."""
    lo, hi = DepthVARConfig().ref_layer_range
    if depth == REFERENCE_DEPTH:
        return lo, hi
    scale = depth / REFERENCE_DEPTH
    lo, hi = round(lo * scale), round(hi * scale)
    return min(lo, depth - 1), min(max(hi, lo), depth - 1)


def _match_flops(var: VAR, base: DepthVARConfig, target: int) -> float:
    """Target fraction f in (0, f_max] whose counted FLOPs come closest to `target` (ties: the cheaper one).

    FLOPs are a nondecreasing step function of f (a larger area raises every token's score).
    """

    def flops(f: float) -> int:
        tables = rank_tables(var.patch_nums, var.depth, replace(base, target_fraction=f))
        counts = [None if t is None or t.full_depth else list(t.counts) for t in tables]
        return counted_flops(var, counts).total

    return match_budget(flops, target, 1e-9, max_target_area(base))


def check_knobs(knobs: Mapping[str, Any]) -> None:
    """Every knob value that can be judged without the model (DepthVARConfig checks its own fields)."""
    check_choice("depthvar", knobs, "budget_match", BUDGET_MATCH)
    if not isinstance(knobs.get("unit_score", False), bool):
        raise knob_error("depthvar", "unit_score", knobs["unit_score"], "true or false")
    try:
        DepthVARConfig(**{k: knobs[k] for k in CONFIG_KNOBS if k in knobs})
    except (TypeError, ValueError) as err:
        raise ValueError(f"method_options.depthvar: {err}") from err


def depthvar_config_for(var: VAR, options: MethodOptions) -> tuple[DepthVARConfig, str]:
    """The DepthVAR configuration a run uses, and a line saying how the budget was met.

    Precedence: an explicit ``reference_scale`` knob, then `budget.reference_scale` (paper mode, A_i = N_R/N_i);
    otherwise the budget's depth: full model at d = D (or bridge N = K), else `budget_for_depth` (token layers) or
    FLOP matching; bridge N = 0 accelerates from scale 1 (scale 0 has nothing to rank on) with FLOP matching.
    """
    knobs = dict(options.knobs)
    budget = options.budget
    cfg_kwargs = {k: knobs[k] for k in CONFIG_KNOBS if k in knobs}
    cfg_kwargs.setdefault("ref_layer_range", default_layer_range(var.depth))
    match = knobs.get("budget_match", "token_layers")
    reference = cfg_kwargs.pop("reference_scale", budget.reference_scale)
    if reference is not None:
        cfg = DepthVARConfig(reference_scale=int(reference), **cfg_kwargs)
        return cfg, f"paper mode: reference scale R={reference} (A_i = N_R / N_i), not matched to the budget"
    K = len(var.patch_nums)
    if budget.is_full or budget.bridge_scales >= K:  # no flexible zone: the budget is the full model
        return DepthVARConfig(reference_scale=K - 1, **cfg_kwargs), "full depth (d = D or no flexible zone)"
    base = DepthVARConfig(**cfg_kwargs)
    if budget.bridge_scales == 0:  # scale 0 has no previous scale to rank: accelerate from scale 1, match FLOPs
        base = replace(base, reference_scale=0)
        f = _match_flops(var, base, budget.variant_flops(var).total)
        return replace(base, target_fraction=f), f"bridge 0: R=0, FLOPs matched to VARiant d={budget.depth}: f={f:.6f}"
    solution = budget_for_depth(var.patch_nums, var.depth, budget.bridge_scales, budget.depth, base)
    if match == "token_layers":
        note = (f"token layers matched to VARiant d={budget.depth}: fraction {solution.achieved_fraction:.4f} "
                f"(target {solution.target_fraction:.4f}), R={solution.config.reference_scale}")
        return solution.config, note
    f = _match_flops(var, solution.config, budget.variant_flops(var).total)
    return replace(solution.config, target_fraction=f), f"FLOPs matched to VARiant d={budget.depth}: f={f:.6f}"


def build_depthvar(var: VAR, options: MethodOptions) -> DepthVARMethod:
    """Registry factory (see the module docstring for the budget rule)."""
    config, note = depthvar_config_for(var, options)
    method = DepthVARMethod(var, config, unit_score=options.knobs.get("unit_score", False))
    method.budget_match = options.budget.match(var, method.expected_flops(var), note)
    return method


METHOD = MethodSpec(
    "depthvar", build_depthvar, knobs=CONFIG_KNOBS + EXTRA_KNOBS, check_values=check_knobs,
    help="DepthVAR: per-token depth at the scales after R from the previous scale's block changes (CVPR 2026); "
         "--depth d matches the VARiant d subnet's token layers, reference_scale gives the paper mode")
