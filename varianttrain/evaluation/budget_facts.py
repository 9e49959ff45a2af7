"""The run's compute budget from what the supernet says and what the eval config says.

A supernet carries the facts of its training: bridge N, the depth choices, the subset rule and the layer subset of
every trained depth (an export's metadata JSON, or ``checkpoint["varianttrain"]`` of a training checkpoint). Those
are what the `variant` row runs. The eval config may restate them (``budget.*``); a value that contradicts the
supernet is an error naming both, never a silent override. Without a supernet (training-free methods only) the
config must give bridge N for any budget below full depth: the budget's FLOPs depend on it.

Refused: bridge N >= the number of scales (every scale would run every block, so the "subnet" is the full
network), a reference scale beyond the last scale, a depth beyond the model. Warned (log and report): a depth the
supernet never trained, a supernet from a pre-training run (its subnets were never trained).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from varianttrain.evaluation.config import BudgetSection
from varianttrain.methods.budget import DepthBudget
from varianttrain.models.depth_plan import SUBSET_RULES


@dataclass(frozen=True)
class SupernetFacts:
    """What a supernet file says about its subnets (None: not recorded)."""

    source: str  # where the facts were read, for messages: "export metadata X.json", "training checkpoint X"
    task: str | None = None
    bridge_scales: int | None = None
    depth_choices: tuple[int, ...] | None = None
    subset_rule: str | None = None
    layer_subsets: Mapping[int, tuple[int, ...]] = field(default_factory=dict)


def facts_from_export(metadata: Mapping[str, Any], source: str) -> SupernetFacts:
    subsets = metadata.get("layer_subsets") or {}
    return SupernetFacts(
        source=source, task=metadata.get("task"), bridge_scales=_int_or_none(metadata.get("bridge_scales")),
        depth_choices=_tuple_or_none(metadata.get("depth_choices")), subset_rule=metadata.get("subset_rule"),
        layer_subsets={int(d): tuple(int(b) for b in blocks) for d, blocks in subsets.items()})


def facts_from_training_checkpoint(entry: Mapping[str, Any], source: str) -> SupernetFacts:
    """From ``checkpoint["varianttrain"]`` = {"config": run config dict, "subsets": {d: [blocks]}}."""
    config = entry.get("config") or {}
    supernet = config.get("supernet") or {}
    subsets = entry.get("subsets") or {}
    return SupernetFacts(
        source=source, task=config.get("task"), bridge_scales=_int_or_none(supernet.get("bridge_scales")),
        depth_choices=_tuple_or_none(supernet.get("depth_choices")), subset_rule=supernet.get("subset_rule"),
        layer_subsets={int(d): tuple(int(b) for b in blocks) for d, blocks in subsets.items()})


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _tuple_or_none(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


@dataclass
class ResolvedBudget:
    """The budget, where each of its facts came from, and what the log and the report must warn about."""

    budget: DepthBudget
    subsets_known: bool  # I_d comes from the supernet or an explicit rule (False: only the FLOPs are meaningful)
    sources: dict[str, str]
    warnings: list[str]

    def describe(self) -> str:
        b = self.budget
        if b.is_full:
            return f"full depth ({b.total_depth} blocks)"
        text = f"VARiant d={b.depth} of {b.total_depth}, bridge N={b.bridge_scales}"
        return text + (f", I_d={list(b.active_blocks())}" if self.subsets_known else
                       " (the FLOPs of any d-block subnet; no supernet, so no I_d)")


def resolve_budget(cfg: BudgetSection, total_depth: int, patch_nums: Sequence[int], facts: SupernetFacts | None,
                   runs_subnet: bool, problems: list[str], supernet_note: str = "") -> ResolvedBudget | None:
    """The `DepthBudget` of the run, or None after adding to `problems` every reason it cannot be built.

    Args:
        facts: the supernet's facts when a row uses the supernet, else None.
        runs_subnet: a row samples the subnet itself (`variant`): its layer subset must be known.
        supernet_note: why `facts` is None although the run uses a supernet (no metadata), for the messages.
    """
    K = len(patch_nums)
    depth = cfg.depth if cfg.depth is not None else total_depth
    start = len(problems)
    warnings: list[str] = []
    sources: dict[str, str] = {}
    if not 1 <= depth <= total_depth:
        problems.append(f"--depth {depth} is outside 1..{total_depth} (the model has {total_depth} blocks)")

    def pick(key: str, configured: Any, stored: Any, show=lambda v: v) -> Any:
        same = stored is None or configured is None or (
            sorted(configured) == sorted(stored) if key == "depth_choices" else configured == stored)
        if not same:
            problems.append(f"budget.{key}={show(configured)} in the eval config contradicts {show(stored)} stored "
                            f"in {facts.source}; remove budget.{key} from the config (null: the supernet's value) or "
                            "evaluate the supernet it describes")
        if stored is not None:
            sources[key] = facts.source
            return stored
        if configured is not None:
            sources[key] = "eval config"
        return configured

    stored = facts or SupernetFacts(source="")
    bridge = pick("bridge_scales", cfg.bridge_scales, stored.bridge_scales)
    rule = pick("subset_rule", cfg.subset_rule, stored.subset_rule)
    choices = pick("depth_choices", cfg.depth_choices, stored.depth_choices, show=lambda v: list(v))
    if rule is not None and rule not in SUBSET_RULES:
        problems.append(f"subset rule {rule!r} (from {sources.get('subset_rule')}) is not one of {list(SUBSET_RULES)}")
    subsets = dict(stored.layer_subsets)
    below_full = depth < total_depth
    if below_full and len(problems) == start:
        where = supernet_note or "no supernet in this run"
        if bridge is None:
            problems.append(f"the budget d={depth} needs bridge N (the scales every subnet runs in full) and nothing "
                            f"gives it: {where}. Set budget.bridge_scales (VARiant's published N = 6 for VAR-d30) "
                            "or give the supernet's export with its metadata JSON")
        elif bridge >= K:
            problems.append(f"bridge N={bridge} (from {sources['bridge_scales']}) is not below the {K} scales of the "
                            f"model (patch_nums {list(patch_nums)}): every scale would run all {total_depth} blocks "
                            "and the d-block 'subnet' would be the full network. Set budget.bridge_scales to a value "
                            f"in 0..{K - 1}")
        if runs_subnet and depth not in subsets and (rule is None or (rule == "nested" and choices is None)):
            problems.append(f"variant at d={depth}: its layer subset I_d is unknown: {where}. Give budget.subset_rule "
                            "(and budget.depth_choices for 'nested') explicitly, or the supernet's metadata")
        if facts is not None and runs_subnet:
            trained = stored.depth_choices or tuple(sorted(subsets))
            if trained and depth not in trained:
                warnings.append(f"depth {depth} was never trained by the supernet (trained depths {sorted(trained)}, "
                                f"{facts.source}); its subset comes from the rule '{rule}'")
            if stored.task == "pretrain":
                warnings.append(f"the supernet ({facts.source}) comes from a pre-training run (task 'pretrain'): its "
                                "subnets were never trained")
    if cfg.reference_scale is not None and cfg.reference_scale > K - 1:
        problems.append(f"--reference-scale {cfg.reference_scale} is beyond the last scale {K - 1} of the model "
                        f"(patch_nums {list(patch_nums)})")
    if len(problems) > start:
        return None
    known = (not below_full) or depth in subsets or (rule is not None and (rule != "nested" or choices is not None))
    try:
        budget = DepthBudget(
            total_depth=total_depth, patch_nums=tuple(patch_nums), depth=depth,
            bridge_scales=bridge if below_full else min(bridge or 0, K),
            # Any d-block subset costs the same FLOPs: without a known rule the budget needs only the count.
            subset_rule=rule or "equidistant",
            depth_choices=tuple(c for c in (choices or ()) if c < total_depth), layer_subsets=subsets,
            reference_scale=cfg.reference_scale)
        if below_full and known:
            budget.active_blocks()  # a stored subset that does not fit the model fails here
    except ValueError as err:
        problems.append(f"budget: {err}")
        return None
    return ResolvedBudget(budget, subsets_known=known, sources=sources, warnings=warnings)
