"""The reference methods: the unmodified model, the VARiant subnet that defines the budget, and early exit.

VARiant: arXiv 2511.16546 (bridge zone + equidistant subnets). Early exit: the EE-k baseline of DepthVAR (arXiv
2604.17286): every token of every scale stops after block e.

All three are fixed scale-wise `DepthPlan`s (`StaticPlanMethod`), so their FLOPs are the closed form of the plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varianttrain.methods.budget import DepthBudget, plan_flops
from varianttrain.methods.common import match_budget
from varianttrain.methods.spec import MethodOptions, MethodSpec, check_int
from varianttrain.models.depth_plan import DepthPlan
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingMethod, StaticPlanMethod


def _static(var: VAR, options: MethodOptions, plan: DepthPlan, name: str, note: str) -> SamplingMethod:
    method = StaticPlanMethod(plan, name=name)
    method.budget_match = options.budget.match(var, plan_flops(var, plan), note)
    return method


def build_full(var: VAR, options: MethodOptions) -> SamplingMethod:
    return _static(var, options, DepthPlan.full(var.depth, var.patch_nums), "full",
                   "the unmodified model: the reference every speed-up is measured against, not budget-matched")


def build_variant(var: VAR, options: MethodOptions) -> SamplingMethod:
    return _static(var, options, options.budget.variant_plan(), "variant",
                   f"the subnet that defines the budget ({options.budget.describe()})")


def matched_early_exit(var: VAR, budget: DepthBudget) -> int:
    """The exit point e whose early-exit plan costs the budget's FLOPs.

    Rule: e in 1..D minimising |FLOPs(early exit e) - FLOPs(VARiant d, bridge N)| (closed form, CFG, one image);
    ties go to the larger e (more compute, never a handicap for the baseline). At d = D this is e = D, the full
    model. Early exit applies e at every scale, bridge included, so e > d in general.
    """
    def flops(x: float) -> int:  # a step function of x: e = floor(x)
        return plan_flops(var, DepthPlan.early_exit(var.depth, var.patch_nums, int(x))).total

    return int(match_budget(flops, budget.variant_flops(var).total, 1.0, float(var.depth), ties="dearer"))


def build_earlyexit(var: VAR, options: MethodOptions) -> SamplingMethod:
    exit_after = options.knobs.get("exit_after")
    if exit_after is None:
        exit_after = matched_early_exit(var, options.budget)
        note = f"exit after block {exit_after} of {var.depth}: the closest early-exit FLOPs (ties: the larger e)"
    else:
        note = f"explicit exit_after={exit_after}: not budget-matched"
    return _static(var, options, DepthPlan.early_exit(var.depth, var.patch_nums, exit_after), "earlyexit", note)


def check_earlyexit_knobs(knobs: Mapping[str, Any]) -> None:
    check_int("earlyexit", knobs, "exit_after", 1)  # the upper limit D is checked with the model


FULL = MethodSpec("full", build_full, help="the unmodified model: every block for every token")
VARIANT = MethodSpec("variant", build_variant,
                     help="VARiant subnet: bridge N scales at full depth, then the d blocks I_d (budget.depth)")
EARLY_EXIT = MethodSpec("earlyexit", build_earlyexit, knobs=("exit_after",), check_values=check_earlyexit_knobs,
                        help="every token stops after block e; e matches the budget's FLOPs unless exit_after is set")
