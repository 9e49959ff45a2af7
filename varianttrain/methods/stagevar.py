"""StageVAR (stage-aware acceleration, arXiv 2512.16483) ported to class-conditional VAR as a sampler strategy.

What is known ([StageVAR] in docs/REFERENCES.md: paper and README figure; no code was released): the semantic and
structure stages run unmodified; only the fidelity-refinement stage (the last, large scales) is accelerated, by (1)
running a single branch instead of the CFG pair, and (2) running the transformer on a random-projection-reduced token
set (Qᵀ of shape (r, M) along the token axis of the step input) and restoring the other positions from the previous
scale's cached output (Representative Token Restoration, RTR): F_k(i) = F_r(i) for i in I, cached F_{k-1}(i) otherwise.
r per step is fixed offline.

Every guess made here where the paper is silent or the sampler forces a choice:

1. Stage boundary: no stage analysis of VAR-d30 exists. Default start (`stage_start`): the first scale whose side
   exceeds half the final side, by analogy with Infinity, whose structure stage ends at 32 of 64 (refinement =
   40/48/64); VAR-d30: 10, 13, 16 (scales 7-9). The budget may move it (below); ``refine_from`` sets it.
2. Branch: the conditional branch is kept (``branch: cond``, `ScalePlan(guidance=False)`), as SkipVAR does; VAR's
   guidance is strongest at the last scales, so this is a larger intervention than in Infinity. ``branch: uncond``
   keeps the null-class rows instead (the "CFG 0 / null prompt" reading; `ScalePlan(kept_branch="uncond")`); its
   FLOPs include recomputing the AdaLN modulations of the kept rows (B x 6 C^2 per block, negligible).
3. Random projection as a token mask: the sampler's blocks run on the scale's own tokens, so r synthetic projected
   tokens (Qᵀ F) cannot be fed to them, and the scale's input is not visible to a method before the scale runs.
   Implemented instead: a fixed seeded Gaussian G (r x M) per refinement scale sketches the previous scale's output
   upsampled to the current size, F̃ (M x C, centred over tokens): F̂ = G F̃ (r x C). Its orthonormal row basis
   V (C x r) is the randomised rank-r range of F̃; the representative set I = the r tokens with the largest
   projection energy ||F̃_i V||² (the share of a token captured by the rank-r sketch; ties in raster order). Those
   tokens run every block (per-token mask, attention among them and the cached earlier scales only, KV written for
   them only); the rest run no block.
4. RTR at the output: in `before_head`, tokens outside I take the previous scale's final hidden state (after the
   last block, after its own restoration), upsampled (``restore_upsample``, default bilinear), i.e. the cached
   F_{k-1}; tokens in I keep the transformer output. Nothing is restored per block.
5. r per scale: r_k = clamp(round(q N_k), 1, N_k) with one rank fraction q for all refinement scales (the paper's
   offline per-step ranks are unknown); ``ranks`` sets them explicitly. With r_k = N_k the scale only drops
   the guidance branch.
6. The sketch is drawn once per method instance from ``seed`` (default 0), per scale in scale order, so results
   depend only on seeds; the projection is recomputed per image (it depends on the image's features).

Budget (`build_stagevar`): for every start s in 1..K (K: no refinement, the full model) the rank fraction q whose
counted FLOPs (one image; the refinement scales count one row) come closest to `budget.variant_flops` is solved
(`match_budget`). The start nearest to the stage boundary (ties: the later) whose FLOPs are within 1 % of the target
wins, else the closest overall; d = D gives s = K. VAR-d30, N = 6: d16 and d8, d4 keep the stage start 7, d2
needs 6.
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
    is_int,
    is_number,
    knob_error,
)
from varianttrain.models.depth_plan import FULL_SCALE, DepthPlan, ScalePlan
from varianttrain.models.flops import FlopCounter
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingContext, SamplingMethod

KNOBS = ("refine_from", "rank_fraction", "ranks", "branch", "seed", "restore_upsample")
UPSAMPLE_MODES = ("bilinear", "nearest", "area")
BRANCHES = ("cond", "uncond")
FLOP_TOLERANCE = 0.01  # relative FLOP gap accepted when preferring a later refinement start


def rank_for(num_tokens: int, fraction: float) -> int:
    """r_k = clamp(round(q N_k), 1, N_k)."""
    return min(num_tokens, max(1, round(fraction * num_tokens)))


def projection_energy(features_BMC: torch.Tensor, sketch_rM: torch.Tensor) -> torch.Tensor:
    """||F̃_i V||² per token, V = orthonormal basis of the rows of G F̃ (F̃ centred over tokens), (B, M)."""
    centred = features_BMC.float() - features_BMC.float().mean(dim=1, keepdim=True)
    sketch_BrC = sketch_rM.to(centred) @ centred  # random projection along the token axis
    basis_BCr = torch.linalg.qr(sketch_BrC.transpose(1, 2), mode="reduced").Q
    return (centred @ basis_BCr).square().sum(-1)


class StageVARMethod(SamplingMethod):
    """StageVAR on the one sampler (see the module docstring for each guess).

    Args:
        var: the model (shape only).
        refine_from: first refinement scale (len(patch_nums): none, the full model).
        ranks: r_k per refinement scale, in order (N_k: all tokens, only the guidance branch is dropped).
        seed: seed of the Gaussian sketches.
        restore_upsample: resize of the previous scale's output for the restored tokens.
    """

    name = "stagevar"

    def __init__(self, var: VAR, refine_from: int, ranks: Sequence[int], seed: int = 0,
                 restore_upsample: str = "bilinear", branch: str = "cond"):
        self.depth, self.patch_nums = var.depth, tuple(var.patch_nums)
        K = len(self.patch_nums)
        if not 1 <= refine_from <= K:
            raise ValueError(f"stagevar: refine_from={refine_from} outside 1..{K} (scale 0 has no previous output)")
        if len(ranks) != K - refine_from:
            raise ValueError(f"stagevar: {len(ranks)} ranks for the {K - refine_from} refinement scales")
        if restore_upsample not in UPSAMPLE_MODES:
            raise ValueError(f"stagevar: restore_upsample={restore_upsample!r}; expected one of {UPSAMPLE_MODES}")
        self.refine_from = refine_from
        self.ranks = {}
        for k, r in zip(range(refine_from, K), ranks, strict=True):
            n = self.patch_nums[k] ** 2
            if not 1 <= r <= n:
                raise ValueError(f"stagevar: rank {r} at scale {k} outside 1..{n}")
            self.ranks[k] = int(r)
        if branch not in BRANCHES:
            raise ValueError(f"stagevar: branch={branch!r}; expected one of {BRANCHES}")
        self.seed = seed
        self.restore_upsample = restore_upsample
        self.branch = branch
        generator = torch.Generator().manual_seed(seed)
        self._sketches = {k: torch.randn(r, self.patch_nums[k] ** 2, generator=generator)
                          for k, r in self.ranks.items() if r < self.patch_nums[k] ** 2}
        self._device_sketches: dict[str, dict[int, torch.Tensor]] = {}
        self._reset()

    def _reset(self) -> None:
        self._k = -1
        self._images = 0
        self._prev_out: torch.Tensor | None = None  # previous scale's final hidden state, conditional rows
        self.representative: torch.Tensor | None = None  # (B, N) bool at the current scale

    def begin(self, ctx: SamplingContext) -> None:
        if ctx.var.depth != self.depth or tuple(ctx.var.patch_nums) != self.patch_nums:
            raise ValueError(f"stagevar was built for depth {self.depth} / patch_nums {self.patch_nums}")
        self._reset()
        self._images = ctx.num_images
        key = str(ctx.device)
        if key not in self._device_sketches:
            self._device_sketches[key] = {k: s.to(ctx.device) for k, s in self._sketches.items()}
        self._sketch = self._device_sketches[key]

    # ------------------------------------------------------------------ hooks
    def scale_plan(self, scale: int) -> ScalePlan:
        self._k = scale
        self.representative = None
        if scale < self.refine_from:
            return FULL_SCALE
        if scale not in self._sketch:
            return ScalePlan(guidance=False, kept_branch=self.branch)  # r = N: single branch, every token
        features = self._upsampled_prev(scale)
        energy = projection_energy(features, self._sketch[scale])
        order = torch.sort(energy, dim=1, descending=True, stable=True).indices[:, :self.ranks[scale]]
        keep_Bl = torch.zeros_like(energy, dtype=torch.bool).scatter_(1, order, True)
        self.representative = keep_Bl
        return ScalePlan(token_mask_BDl=keep_Bl[:, None, :].expand(-1, self.depth, -1),
                         token_counts=(self.ranks[scale],) * self.depth, guidance=False, kept_branch=self.branch)

    def _upsampled_prev(self, scale: int) -> torch.Tensor:
        if self._prev_out is None:
            raise RuntimeError(f"stagevar: no output cached at scale {scale - 1}")
        prev, pn = self.patch_nums[scale - 1], self.patch_nums[scale]
        return upsample_tokens(self._prev_out, (prev, prev), (pn, pn), self.restore_upsample)

    def before_head(self, scale: int, x_BlC: torch.Tensor) -> torch.Tensor:
        if self.representative is not None:  # RTR: the rest takes the previous scale's cached output
            cached = self._upsampled_prev(scale).to(x_BlC.dtype)
            x_BlC = torch.where(self.representative[..., None], x_BlC, cached)
        if scale + 1 in self._sketch:
            # the rows of the branch that survives: before the refinement stage the CFG pair is still there
            begin = self._images if self.branch == "uncond" and x_BlC.shape[0] == 2 * self._images else 0
            self._prev_out = x_BlC[begin:begin + self._images]
        return x_BlC

    def kv_capacity_plan(self) -> DepthPlan | None:
        return capacity_plan(self.depth, self.patch_nums, self.token_counts())

    # ------------------------------------------------------------------ cost
    def token_counts(self) -> list[list[int] | None]:
        return _token_counts(self.patch_nums, self.depth, self.ranks)

    def rows(self) -> list[int]:
        """Rows one image occupies per scale: 2 (CFG pair) before the refinement stage, 1 inside it."""
        return _rows(len(self.patch_nums), self.refine_from)

    def expected_flops(self, var: VAR) -> FlopCounter:
        """Closed-form FLOPs of one image (equals the sampler's count)."""
        flops = counted_flops(var, self.token_counts(), self.rows())
        if self.branch == "uncond" and self.refine_from < len(self.patch_nums):
            # the sampler recomputes the AdaLN modulations of the kept null-class row for every block (all run)
            flops.add_modulation(1, var.C, self.depth)
        return flops

    def describe(self) -> str:
        if self.refine_from >= len(self.patch_nums):
            return "stagevar: no refinement scale (full model)"
        ranks = {self.patch_nums[k]: f"{r}/{self.patch_nums[k] ** 2}" for k, r in self.ranks.items()}
        kept = "conditional" if self.branch == "cond" else "unconditional"
        return f"stagevar: refinement from scale {self.refine_from}, {kept} branch only, ranks {ranks}"


# ----------------------------------------------------------------------------------------------------------------
# Factory and budget
# ----------------------------------------------------------------------------------------------------------------


def _token_counts(patch_nums: Sequence[int], depth: int, ranks: dict[int, int]) -> list[list[int] | None]:
    """Per scale the tokens each block runs: r_k at a refinement scale with r_k < N_k, else every token."""
    return [None if ranks.get(k, pn * pn) == pn * pn else [ranks[k]] * depth for k, pn in enumerate(patch_nums)]


def _rows(num_scales: int, refine_from: int) -> list[int]:
    return [2 if k < refine_from else 1 for k in range(num_scales)]


def _flops(var: VAR, refine_from: int, fraction: float) -> int:
    """Counted FLOPs of the conditional-branch plan (no sketches drawn: the solver calls this a few hundred times)."""
    ranks = {k: rank_for(pn * pn, fraction) for k, pn in enumerate(var.patch_nums) if k >= refine_from}
    counts = _token_counts(var.patch_nums, var.depth, ranks)
    return counted_flops(var, counts, _rows(len(var.patch_nums), refine_from)).total


def solve_rank_fraction(var: VAR, refine_from: int, target: int) -> float:
    """Rank fraction q in (0, 1] whose counted FLOPs come closest to `target` (ties: the cheaper, smaller q)."""
    return match_budget(lambda q: _flops(var, refine_from, q), target, 1e-9, 1.0)


def stage_start(patch_nums: Sequence[int]) -> int:
    """First refinement scale: the first side > half the final side (Infinity: 40 of 64; VAR-d30: 10, scale 7)."""
    return next(k for k, pn in enumerate(patch_nums) if 2 * pn > patch_nums[-1])


def plan_for_budget(var: VAR, target: int) -> tuple[int, float]:
    """(refine_from, q): the start nearest the stage boundary within FLOP_TOLERANCE of `target`, else the closest."""
    K = len(var.patch_nums)
    boundary = max(stage_start(var.patch_nums), 1)
    full = counted_flops(var, [None] * K).total
    candidates = [(K, 1.0, abs(full - target) / target)]
    for start in range(1, K):
        q = solve_rank_fraction(var, start, target)
        candidates.append((start, q, abs(_flops(var, start, q) - target) / target))
    candidates.sort(key=lambda c: (abs(c[0] - boundary), -c[0]))
    for start, q, gap in candidates:
        if gap <= FLOP_TOLERANCE:
            return start, q
    start, q, _ = min(candidates, key=lambda c: (c[2], abs(c[0] - boundary), -c[0]))
    return start, q


def check_knobs(knobs: Mapping[str, Any]) -> None:
    """Every knob value that can be judged without the model (scale limits and rank counts need its shape)."""
    check_int("stagevar", knobs, "refine_from", 1)
    q = knobs.get("rank_fraction", 1.0)
    if not (is_number(q) and 0.0 < q <= 1.0):
        raise knob_error("stagevar", "rank_fraction", q, "0 < q <= 1")
    check_int_list("stagevar", knobs, "ranks", 1)
    check_choice("stagevar", knobs, "branch", BRANCHES)
    if "seed" in knobs and not is_int(knobs["seed"]):
        raise knob_error("stagevar", "seed", knobs["seed"], "an integer")
    check_choice("stagevar", knobs, "restore_upsample", UPSAMPLE_MODES)


def build_stagevar(var: VAR, options: MethodOptions) -> StageVARMethod:
    """Registry factory: the budget rule of the module docstring; explicit knobs win."""
    knobs, budget = options.knobs, options.budget
    K = len(var.patch_nums)
    if "refine_from" in knobs or "ranks" in knobs or "rank_fraction" in knobs:
        refine_from = knobs.get("refine_from", max(budget.bridge_scales, 1))
        note = "explicit refinement settings: not budget-matched"
        q = knobs.get("rank_fraction", 1.0)
    elif budget.is_full:
        refine_from, q, note = K, 1.0, "full depth (d = D): no refinement stage"
    else:
        refine_from, q = plan_for_budget(var, budget.variant_flops(var).total)
        note = f"refinement from scale {refine_from}, rank fraction {q:.4f}, matched to VARiant d={budget.depth}"
    ranks = list(knobs["ranks"]) if "ranks" in knobs else [rank_for(pn * pn, q) for pn in var.patch_nums[refine_from:]]
    method = StageVARMethod(var, refine_from, ranks, seed=knobs.get("seed", 0),
                            restore_upsample=knobs.get("restore_upsample", "bilinear"),
                            branch=knobs.get("branch", "cond"))
    method.budget_match = budget.match(var, method.expected_flops(var), note)
    return method


METHOD = MethodSpec(
    "stagevar", build_stagevar, knobs=KNOBS, check_values=check_knobs,
    help="StageVAR: the refinement scales drop the guidance branch and run on random-projection-selected "
         "representative tokens, the rest restored from the previous scale's output; matched to the budget's FLOPs")
