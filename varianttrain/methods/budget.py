"""The compute budget every method is built for: ``--depth d`` = the FLOPs of a VARiant d-layer subnet.

VARiant: arXiv 2511.16546, docs/REFERENCES.md.

The first N scales (the bridge) run all D blocks, the later scales run the d blocks I_d. Each factory receives the
budget and the model and picks its own knobs so that its sampling FLOPs match `DepthBudget.variant_flops` as closely
as its design allows; it reports how close it came in a `BudgetMatch` (`DepthBudget.match`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from varianttrain.models.depth_plan import DepthPlan, SubsetRule, layer_subset
from varianttrain.models.flops import BudgetMatch, FlopCounter, sampling_flops
from varianttrain.models.var import VAR

DEFAULT_BRIDGE_SCALES = 6  # VARiant's published bridge N


@dataclass(frozen=True)
class DepthBudget:
    """The compute budget of a run: a VARiant subnet of `depth` blocks after `bridge_scales` full-depth scales.

    Attributes:
        total_depth: D, the blocks of the model.
        patch_nums: the token pyramid.
        depth: d, the subnet depth (d = D is the full model).
        bridge_scales: N, scales that always run all D blocks.
        subset_rule / depth_choices: how I_d is chosen (`layer_subset`); `depth_choices` makes `nested` subsets
            nest with the other trained depths.
        layer_subsets: explicit I_d per depth (from an export's metadata); wins over the rule.
        reference_scale: optional override of the last full-compute scale for token-level methods (DepthVAR's R);
            None lets each method derive it from the budget.
    """

    total_depth: int
    patch_nums: tuple[int, ...]
    depth: int
    bridge_scales: int = DEFAULT_BRIDGE_SCALES
    subset_rule: SubsetRule = "nested"
    depth_choices: tuple[int, ...] = ()
    layer_subsets: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    reference_scale: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.depth <= self.total_depth:
            raise ValueError(f"--depth {self.depth} is outside 1..{self.total_depth} (the model has "
                             f"{self.total_depth} blocks)")
        if not 0 <= self.bridge_scales <= len(self.patch_nums):
            raise ValueError(f"bridge_scales={self.bridge_scales} is outside 0..{len(self.patch_nums)} "
                             f"(patch_nums {list(self.patch_nums)}); set budget.bridge_scales")

    @property
    def is_full(self) -> bool:
        return self.depth == self.total_depth

    def active_blocks(self) -> tuple[int, ...]:
        """I_d: the blocks the subnet keeps after the bridge."""
        if self.depth in self.layer_subsets:
            subset = tuple(sorted(self.layer_subsets[self.depth]))
            if len(subset) != self.depth or any(not 0 <= b < self.total_depth for b in subset):
                raise ValueError(f"layer subset for depth {self.depth} from the export metadata is {subset}: "
                                 f"expected {self.depth} distinct blocks in 0..{self.total_depth - 1}")
            return subset
        choices = tuple(c for c in self.depth_choices if c <= self.total_depth)
        return layer_subset(self.total_depth, self.depth, self.subset_rule, choices)

    def variant_plan(self) -> DepthPlan:
        """The VARiant subnet plan that defines the budget."""
        if self.is_full:
            return DepthPlan.full(self.total_depth, self.patch_nums)
        return DepthPlan.subnet(self.total_depth, self.patch_nums, self.bridge_scales, self.active_blocks())

    def variant_flops(self, var: VAR, cfg: bool = True) -> FlopCounter:
        """Closed-form sampling FLOPs of one image under the budget's subnet (the target for every method)."""
        return plan_flops(var, self.variant_plan(), cfg=cfg)

    def match(self, var: VAR, flops: FlopCounter, note: str) -> BudgetMatch:
        """What a factory reports: its method's closed-form FLOPs against this budget's, and how it got there."""
        return BudgetMatch(target_flops=self.variant_flops(var).total, flops=flops, note=note)

    def describe(self) -> str:
        if self.is_full:
            return f"full depth ({self.total_depth} blocks)"
        return (f"VARiant d={self.depth} of {self.total_depth}, bridge N={self.bridge_scales}, "
                f"I_d={list(self.active_blocks())}")


def blocks_per_scale(plan: DepthPlan) -> list[tuple[int, ...]]:
    """Blocks each scale runs, for scale-wise plans (no per-token masks)."""
    out = []
    for k, scale in enumerate(plan.scales):
        if scale.token_mask_BDl is not None:
            raise ValueError(f"scale {k} of the plan has per-token masks; closed-form FLOPs need a scale-wise plan")
        out.append(tuple(range(plan.depth)) if scale.blocks is None else tuple(scale.blocks))
    return out


def plan_flops(var: VAR, plan: DepthPlan, cfg: bool = True) -> FlopCounter:
    """`sampling_flops` of a scale-wise plan for this model (one image)."""
    return sampling_flops(var.C, var.V, var.Cvae, var.patch_nums, blocks_per_scale(plan), cfg=cfg)
