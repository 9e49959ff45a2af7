"""Evaluation methods by name: name -> factory(var, options) -> `SamplingMethod`.

Every method is a strategy for the one sampler (`varianttrain.sampling.sampler.generate`); this module only says
how to build one for a given model and compute budget.

Budget semantics (the contract every factory follows): ``--depth d`` means "the compute of a VARiant d-layer
subnet with bridge N" -- the first N scales run all D blocks, the later scales run the d blocks I_d. Each factory
receives that budget (`DepthBudget`) and the model, and picks its own knobs so that its sampling FLOPs match the
budget as closely as its design allows (`DepthBudget.variant_flops` is the target, from the closed form
`varianttrain.models.flops.sampling_flops`). Explicit knobs from the config (``method_options.<name>``) win over
what the factory would derive.

Built in: ``full``, ``variant``, ``earlyexit``. Other methods live in their own modules and register themselves:

    # varianttrain/methods/fastvar.py
    from varianttrain.methods.registry import register_method
    register_method("fastvar", build_fastvar, help="FastVAR: prune cached tokens at the large scales")

The modules named in `PLUGIN_MODULES` are imported on the first registry lookup (not when this module is
imported), so adding a method needs no edit here beyond that list; a plugin module that does not exist yet is
skipped. A factory that cannot run with the given config (e.g. ``code`` without its refiner checkpoint) raises
`MethodUnavailable`; ``--mode all`` then skips the method and says why, an explicit ``--mode`` fails.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from varianttrain.models.depth_plan import DepthPlan, SubsetRule, layer_subset
from varianttrain.models.flops import FlopCounter, sampling_flops
from varianttrain.models.var import VAR
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.sampler import SamplingMethod, StaticPlanMethod

# Imported lazily, in this order; this is also the order of `--mode all` and of the report rows.
PLUGIN_MODULES: tuple[str, ...] = (
    "varianttrain.methods.depthvar",
    "varianttrain.methods.stagevar",
    "varianttrain.methods.fastvar",
    "varianttrain.methods.code",
)
DEFAULT_BRIDGE_SCALES = 6  # VARiant's N = 6 (ANCHORS §0.1)


class MethodUnavailable(RuntimeError):
    """A method cannot be built with this config (missing optional input); `--mode all` skips it."""


# ----------------------------------------------------------------------------------------------------------- budget
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


def matched_early_exit(var: VAR, budget: DepthBudget) -> int:
    """The exit point e whose early-exit plan costs the budget's FLOPs.

    Rule: e in 1..D minimising |FLOPs(early exit e) - FLOPs(VARiant d, bridge N)| (closed form, CFG, one image);
    ties go to the larger e (more compute, never a handicap for the baseline). At d = D this is e = D, the full
    model. Early exit applies e at every scale, bridge included, so e > d in general.
    """
    target = budget.variant_flops(var).total
    best_e, best_gap = var.depth, None
    for e in range(var.depth, 0, -1):  # descending: a strictly smaller gap is needed to prefer a smaller e
        gap = abs(plan_flops(var, DepthPlan.early_exit(var.depth, var.patch_nums, e)).total - target)
        if best_gap is None or gap < best_gap:
            best_e, best_gap = e, gap
    return best_e


# ------------------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class MethodOptions:
    """What a factory gets besides the model.

    Attributes:
        budget: the compute budget (see the module docstring).
        knobs: ``method_options.<name>`` from the eval config (method-specific overrides; may be empty).
        sampling: the sampling protocol of the run.
        vqvae: the tokenizer (some methods look at decoded features); None in pure-model contexts.
        device: where sampling runs.
        model_loader: builds another VAR from a checkpoint path (``code`` needs a second model); None when the
            caller has no checkpoint context.
    """

    budget: DepthBudget
    knobs: Mapping[str, Any] = field(default_factory=dict)
    sampling: SamplingConfig = field(default_factory=SamplingConfig.official)
    vqvae: Any = None
    device: str = "cpu"
    model_loader: Callable[[str], VAR] | None = None


MethodFactory = Callable[[VAR, MethodOptions], SamplingMethod]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its factory, a one-line help, the knobs it understands (for config checking)."""

    name: str
    factory: MethodFactory
    help: str = ""
    knobs: tuple[str, ...] = ()  # empty: the factory checks its own knobs

    def build(self, var: VAR, options: MethodOptions) -> SamplingMethod:
        if self.knobs:
            unknown = sorted(set(options.knobs) - set(self.knobs))
            if unknown:
                raise ValueError(f"method_options.{self.name}: unknown knob(s) {unknown}; {self.name} understands "
                                 f"{list(self.knobs)}")
        method = self.factory(var, options)
        if not isinstance(method, SamplingMethod):
            raise TypeError(f"factory of method {self.name!r} returned {type(method).__name__}, not a SamplingMethod")
        method.name = self.name
        return method


_REGISTRY: dict[str, MethodSpec] = {}
_PLUGINS_LOADED = False


def register_method(name: str, factory: MethodFactory, help: str = "", knobs: tuple[str, ...] = (),
                    replace: bool = False) -> MethodSpec:
    """Add a method. Names are lower-case identifiers ('all' is reserved); re-registering needs `replace=True`."""
    if not name or name != name.lower() or not name.replace("_", "").replace("-", "").isalnum() or name == "all":
        raise ValueError(f"invalid method name {name!r}: lower-case letters, digits, '-' or '_', not 'all'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.factory is not factory and not replace:
        raise ValueError(f"method {name!r} is already registered (by {existing.factory.__module__}); "
                         "pass replace=True to override it")
    spec = MethodSpec(name, factory, help, tuple(knobs))
    _REGISTRY[name] = spec
    return spec


def _load_plugins() -> None:
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # the plugin exists but one of its imports is missing: a real error
                raise


def available_methods() -> list[str]:
    """Registered method names: built-ins first, then plugins in `PLUGIN_MODULES` order, then the rest."""
    _load_plugins()
    order = ["full", "variant", "earlyexit"] + [m.rsplit(".", 1)[1] for m in PLUGIN_MODULES]
    known = [n for n in order if n in _REGISTRY]
    return known + sorted(n for n in _REGISTRY if n not in known)


def get_method(name: str) -> MethodSpec:
    _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(available_methods())} (or 'all')")
    return _REGISTRY[name]


def resolve_methods(requested: tuple[str, ...] | list[str]) -> list[str]:
    """Expand 'all' and comma lists ('full,variant') into registered names, keeping order, no duplicates."""
    names: list[str] = []
    for entry in requested:
        for name in (p.strip() for p in entry.split(",")):
            if not name:
                continue
            expanded = available_methods() if name == "all" else [get_method(name).name]
            names.extend(n for n in expanded if n not in names)
    if not names:
        raise ValueError("no method requested; use --mode all or a method name: " + ", ".join(available_methods()))
    return names


def build_method(name: str, var: VAR, options: MethodOptions) -> SamplingMethod:
    """Build method `name` for `var` under `options`."""
    return get_method(name).build(var, options)


# ------------------------------------------------------------------------------------------------------ built-ins
def _full(var: VAR, options: MethodOptions) -> SamplingMethod:
    return StaticPlanMethod(DepthPlan.full(var.depth, var.patch_nums), name="full")


def _variant(var: VAR, options: MethodOptions) -> SamplingMethod:
    return StaticPlanMethod(options.budget.variant_plan(), name="variant")


def _earlyexit(var: VAR, options: MethodOptions) -> SamplingMethod:
    exit_after = options.knobs.get("exit_after")
    if exit_after is None:
        exit_after = matched_early_exit(var, options.budget)
    return StaticPlanMethod(DepthPlan.early_exit(var.depth, var.patch_nums, int(exit_after)), name="earlyexit")


register_method("full", _full, help="the unmodified model: every block for every token")
register_method("variant", _variant,
                help="VARiant subnet: bridge N scales at full depth, then the d blocks I_d (budget.depth)")
register_method("earlyexit", _earlyexit, knobs=("exit_after",),
                help="every token stops after block e; e matches the budget's FLOPs unless exit_after is set")
