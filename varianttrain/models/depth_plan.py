"""Which transformer blocks run for which tokens: the one description shared by training and every sampler.

A `DepthPlan` holds one `ScalePlan` per scale of the token pyramid. A scale plan says

* which blocks run at all for that scale (`blocks`; `None` = every block), and
* optionally, per token, which of those blocks run (`token_mask_BDl`, shape (B, depth, n_k), bool).

Semantics (identical in the teacher-forcing forward and in the KV-cached sampler):

* a block that does not run for a token leaves that token's hidden state unchanged (identity);
* a token that skips a block writes no key/value for that block, so later tokens cannot attend to it there;
* inside one block, a token attends to every token of its own and earlier scales that also runs the block.

VARiant (scale-wise subnets), early exit, DepthVAR (per-token depths) and the token-pruning baselines are all
expressed with this one object; the model code never needs to know which method produced it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal, get_args

import torch

# How a depth-d subnet picks its blocks (`layer_subset`). The one definition of this vocabulary: the training and
# evaluation configs, the benchmark CLI and the method registry all import it from here.
SubsetRule = Literal["nested", "equidistant"]
SUBSET_RULES: tuple[str, ...] = get_args(SubsetRule)


def equidistant_layer_subset(total_depth: int, depth: int) -> tuple[int, ...]:
    """The VARiant paper's rule I_d = {floor(i (D-1) / (d-1)) : i < d} ([VARiant], arXiv 2511.16546).

    At D = 30 the subsets do not nest (I_8 is not inside I_16), although the paper describes nested subnets.
    """
    _check_depth(total_depth, depth)
    if depth == total_depth:
        return tuple(range(total_depth))
    if depth == 1:
        return (0,)
    # Integer arithmetic: floor(i (D-1) / (d-1)) exactly, no float rounding at the boundaries.
    return tuple(i * (total_depth - 1) // (depth - 1) for i in range(depth))


def nested_layer_subsets(total_depth: int, depths: Sequence[int]) -> dict[int, tuple[int, ...]]:
    """Layer subsets that nest (I_2 c I_4 c ... c all) and are as evenly spaced as possible.

    Depths are processed from small to large. Each subset is the sorted set of d distinct layers that contains
    the previous (smaller) subset and minimises the squared distance to the ideal positions i (D-1) / (d-1);
    ties go to the lower layer, like the floor of the paper's rule. Solved exactly by dynamic programming.
    """
    subsets: dict[int, tuple[int, ...]] = {}
    required: tuple[int, ...] = ()
    for depth in sorted(set(depths)):
        _check_depth(total_depth, depth)
        subset = _closest_superset(total_depth, depth, required)
        subsets[depth] = subset
        required = subset
    return subsets


def layer_subset(total_depth: int, depth: int, rule: SubsetRule = "nested",
                 depth_choices: Sequence[int] = ()) -> tuple[int, ...]:
    """The blocks a depth-`depth` subnet keeps. `nested` needs all depth choices to build the chain."""
    if rule == "equidistant":
        return equidistant_layer_subset(total_depth, depth)
    if rule == "nested":
        return nested_layer_subsets(total_depth, tuple(depth_choices) + (depth,))[depth]
    raise ValueError(f"unknown layer-subset rule {rule!r}; use one of {', '.join(SUBSET_RULES)}")


def _check_depth(total_depth: int, depth: int) -> None:
    if not 1 <= depth <= total_depth:
        raise ValueError(f"subnet depth {depth} is outside 1..{total_depth} (the model has {total_depth} blocks)")


def _closest_superset(total_depth: int, depth: int, required: tuple[int, ...]) -> tuple[int, ...]:
    if len(required) > depth:
        raise ValueError(f"cannot nest: {len(required)} required layers do not fit in a depth-{depth} subset")
    if depth == total_depth:
        return tuple(range(total_depth))
    ideal = [0.0] if depth == 1 else [i * (total_depth - 1) / (depth - 1) for i in range(depth)]
    req = set(required)
    inf = math.inf
    # cost[i][x]: best cost of slots 0..i with slot i at layer x; no required layer may be skipped in between.
    cost = [[inf] * total_depth for _ in range(depth)]
    back = [[-1] * total_depth for _ in range(depth)]
    for x in range(total_depth):
        if not any(r < x for r in req):
            cost[0][x] = (x - ideal[0]) ** 2 + 1e-9 * x
    for i in range(1, depth):
        for x in range(i, total_depth):
            local = (x - ideal[i]) ** 2 + 1e-9 * x  # tiny tilt: ties go to the lower layer
            for prev in range(i - 1, x):
                if cost[i - 1][prev] == inf or any(prev < r < x for r in req):
                    continue
                total = cost[i - 1][prev] + local
                if total < cost[i][x]:
                    cost[i][x], back[i][x] = total, prev
    best_x, best = -1, inf
    for x in range(total_depth):
        if cost[depth - 1][x] < best and not any(r > x for r in req):
            best_x, best = x, cost[depth - 1][x]
    subset = [best_x]
    for i in range(depth - 1, 0, -1):
        subset.append(back[i][subset[-1]])
    return tuple(reversed(subset))


@dataclass(frozen=True, eq=False)
class ScalePlan:
    """Blocks that run at one scale.

    Attributes:
        blocks: indices of the blocks that run at this scale (ascending); None means all blocks.
        token_mask_BDl: optional per-token refinement, bool (B, depth, n_k): token t of sample b runs block j
            iff `token_mask_BDl[b, j, t]` (and j is in `blocks`). B is the number of images; in a CFG sampler
            both halves of an image share its mask.
        token_counts: optional, with a mask whose per-block token count is the same for every image: that count
            per block (`token_mask_BDl[:, j].sum(-1)` == `token_counts[j]` for every image). The sampler then
            gathers the running tokens without reading the mask back to the host (no device sync).
        guidance: False runs a single branch instead of the CFG pair from this scale on (StageVAR).
        kept_branch: which branch survives when guidance is dropped: 'cond' (the class-conditional rows) or
            'uncond' (the null-class rows).
    """

    blocks: tuple[int, ...] | None = None
    token_mask_BDl: torch.Tensor | None = None
    token_counts: tuple[int, ...] | None = None
    guidance: bool = True
    kept_branch: Literal["cond", "uncond"] = "cond"

    def __post_init__(self):
        if self.token_counts is not None and (self.token_mask_BDl is None
                                              or len(self.token_counts) != self.token_mask_BDl.shape[1]):
            raise ValueError("ScalePlan.token_counts needs a token mask and one count per block of that mask")

    def runs_block(self, block: int) -> bool:
        """Whether any token of this scale runs `block`."""
        return self.blocks is None or block in self._block_set

    @cached_property
    def _block_set(self) -> frozenset[int]:
        return frozenset(self.blocks or ())

    @property
    def is_full(self) -> bool:
        return self.blocks is None and self.token_mask_BDl is None


FULL_SCALE = ScalePlan()


class DepthPlan:
    """One `ScalePlan` per scale: the complete answer to "which blocks run for which tokens"."""

    def __init__(self, depth: int, patch_nums: Sequence[int], scales: Sequence[ScalePlan]):
        if len(scales) != len(patch_nums):
            raise ValueError(f"a depth plan needs one ScalePlan per scale: got {len(scales)} for {len(patch_nums)}")
        for k, scale in enumerate(scales):
            if scale.blocks is not None and any(not 0 <= b < depth for b in scale.blocks):
                raise ValueError(f"scale {k}: block indices {scale.blocks} outside 0..{depth - 1}")
            if scale.token_mask_BDl is not None:
                mask = scale.token_mask_BDl
                if mask.dtype != torch.bool or mask.ndim != 3 or mask.shape[1:] != (depth, patch_nums[k] ** 2):
                    raise ValueError(f"scale {k}: token mask must be bool (B, {depth}, {patch_nums[k] ** 2}), "
                                     f"got {tuple(mask.shape)} {mask.dtype}")
        self.depth = depth
        self.patch_nums = tuple(patch_nums)
        self.scales = tuple(scales)

    # ---------------------------------------------------------------- constructors
    @classmethod
    def full(cls, depth: int, patch_nums: Sequence[int]) -> DepthPlan:
        """Every block for every token: the unmodified model."""
        return cls(depth, patch_nums, [FULL_SCALE] * len(patch_nums))

    @classmethod
    def subnet(cls, depth: int, patch_nums: Sequence[int], bridge_scales: int,
               active_blocks: Sequence[int]) -> DepthPlan:
        """VARiant: the first `bridge_scales` scales run all blocks, later scales only `active_blocks`."""
        if not 0 <= bridge_scales <= len(patch_nums):
            raise ValueError(f"bridge_scales={bridge_scales} outside 0..{len(patch_nums)}")
        flexible = ScalePlan(blocks=tuple(sorted(set(active_blocks))))
        if len(flexible.blocks) == depth:
            flexible = FULL_SCALE
        return cls(depth, patch_nums, [FULL_SCALE] * bridge_scales + [flexible] * (len(patch_nums) - bridge_scales))

    @classmethod
    def early_exit(cls, depth: int, patch_nums: Sequence[int], exit_after: int) -> DepthPlan:
        """Every token at every scale stops after block `exit_after - 1` (blocks 0..exit_after-1 run)."""
        if not 1 <= exit_after <= depth:
            raise ValueError(f"exit_after={exit_after} outside 1..{depth}")
        scale = FULL_SCALE if exit_after == depth else ScalePlan(blocks=tuple(range(exit_after)))
        return cls(depth, patch_nums, [scale] * len(patch_nums))

    # ---------------------------------------------------------------- queries
    @property
    def is_full(self) -> bool:
        return all(s.is_full for s in self.scales)

    @cached_property
    def scale_begin_end(self) -> tuple[tuple[int, int], ...]:
        out, begin = [], 0
        for pn in self.patch_nums:
            out.append((begin, begin + pn * pn))
            begin += pn * pn
        return tuple(out)

    def block_tokens(self, block: int) -> int | torch.Tensor | None:
        """Tokens of the full sequence that run `block`, for the teacher-forcing forward.

        Returns None when every token runs it, an int p when exactly the prefix [0, p) runs it (the cheap case
        VARiant training relies on: the block is then evaluated on the prefix only), or a bool (B, L) mask.
        """
        per_scale: list[torch.Tensor | bool] = []
        for scale in self.scales:
            if not scale.runs_block(block):
                per_scale.append(False)
            elif scale.token_mask_BDl is None:
                per_scale.append(True)
            else:
                per_scale.append(scale.token_mask_BDl[:, block, :])
        if all(v is True for v in per_scale):
            return None
        if all(isinstance(v, bool) for v in per_scale):
            n_true = 0
            while n_true < len(per_scale) and per_scale[n_true] is True:
                n_true += 1
            if not any(per_scale[n_true:]):
                return self.scale_begin_end[n_true - 1][1] if n_true else 0
        batch = max((v.shape[0] for v in per_scale if isinstance(v, torch.Tensor)), default=1)
        device = next((v.device for v in per_scale if isinstance(v, torch.Tensor)), None)
        parts = [v if isinstance(v, torch.Tensor) else torch.full((batch, pn * pn), v, dtype=torch.bool,
                                                                      device=device)
                 for v, pn in zip(per_scale, self.patch_nums, strict=True)]
        return torch.cat([p.expand(batch, -1) for p in parts], dim=1)

    def tokens_per_block(self) -> list[list[float]]:
        """Mean number of tokens (over the batch) that run each block at each scale: [scale][block]."""
        table = []
        for scale, pn in zip(self.scales, self.patch_nums, strict=True):
            n = pn * pn
            row = []
            for b in range(self.depth):
                if not scale.runs_block(b):
                    row.append(0.0)
                elif scale.token_mask_BDl is None:
                    row.append(float(n))
                elif scale.token_counts is not None:  # known on the host: no device read
                    row.append(float(scale.token_counts[b]))
                else:
                    row.append(scale.token_mask_BDl[:, b, :].sum(-1).float().mean().item())
            table.append(row)
        return table

    def token_layer_fraction(self, first_scale: int = 0) -> float:
        """Share of (token, block) pairs that run, over scales >= first_scale (1.0 for the full model)."""
        table = self.tokens_per_block()[first_scale:]
        tokens = sum(pn * pn for pn in self.patch_nums[first_scale:])
        return sum(map(sum, table)) / (tokens * self.depth)

    def describe(self) -> str:
        parts = []
        for k, scale in enumerate(self.scales):
            if scale.is_full:
                parts.append(f"{self.patch_nums[k]}:all")
            elif scale.token_mask_BDl is None:
                parts.append(f"{self.patch_nums[k]}:{len(scale.blocks)}")
            else:
                parts.append(f"{self.patch_nums[k]}:per-token")
        return " ".join(parts)
