"""Evaluation methods by name: name -> `MethodSpec` -> factory(var, options) -> `SamplingMethod`.

Every method is a strategy for the one sampler (`varianttrain.sampling.sampler.generate`); its module says how to
build one for a given model and compute budget (`varianttrain.methods.budget`), and this module lists them.

`METHODS` below is the one place methods are registered, one line each, in the order of ``--mode all`` and of the
report rows. Adding a method: a new module in this package that defines its `MethodSpec` (see docs/METHODS.md),
imported on the line above `METHODS`, plus one line in `METHODS`. Tests and scripts may add more at run time with
`register_method`.

Which weights a method samples with is part of its registration (`MethodSpec.runs_on`): the training-free methods
and CoDe's drafter use the released model, as their papers do; `variant` uses the supernet, whose weights were
fine-tuned for its layer subsets. Running an accelerator on the supernet's weights would credit it with VARiant's
fine-tuning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from varianttrain.methods import baselines, code, depthvar, fastvar, stagevar
from varianttrain.methods.spec import KnobCheck, MethodFactory, MethodOptions, MethodSpec, RunsOn
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingMethod

METHODS: tuple[MethodSpec, ...] = (
    baselines.FULL,
    dataclasses.replace(baselines.VARIANT, runs_on="supernet"),  # the subnets of the supernet's own weights
    baselines.EARLY_EXIT,
    depthvar.METHOD,
    stagevar.METHOD,
    fastvar.METHOD,
    code.METHOD,  # drafts with model.base, refines with model.refiner
)

_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec, replace: bool = False) -> MethodSpec:
    """Add a method. Names are lower-case identifiers ('all' is reserved); re-registering needs `replace=True`."""
    name = spec.name
    if not name or name != name.lower() or not name.replace("_", "").replace("-", "").isalnum() or name == "all":
        raise ValueError(f"invalid method name {name!r}: lower-case letters, digits, '-' or '_', not 'all'")
    existing = _REGISTRY.get(name)
    if existing is not None and existing.factory is not spec.factory and not replace:
        raise ValueError(f"method {name!r} is already registered (by {existing.factory.__module__}); "
                         "pass replace=True to override it")
    _REGISTRY[name] = spec
    return spec


def register_method(name: str, factory: MethodFactory, help: str = "", knobs: tuple[str, ...] = (),
                    check_values: KnobCheck | None = None, replace: bool = False, runs_on: RunsOn = "base",
                    needs: tuple[str, ...] = ()) -> MethodSpec:
    """`register` for a method defined at run time (a script or a test)."""
    return register(MethodSpec(name, factory, help, tuple(knobs), check_values, tuple(needs), runs_on),
                    replace=replace)


for _spec in METHODS:
    register(_spec)


def available_methods() -> list[str]:
    """Registered method names: `METHODS` in order, then those registered at run time."""
    return list(_REGISTRY)


def get_method(name: str) -> MethodSpec:
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


def check_method_options(method_options: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, without building a model, ``method_options`` for unknown methods, unknown knobs and wrong values.

    Every problem is reported at once (one line each), so a config is fixed in one go.
    """
    unknown = sorted(set(method_options) - set(_REGISTRY))
    problems = [f"method_options has entries for unknown methods {unknown}; registered: "
                f"{', '.join(available_methods())}"] if unknown else []
    for name, knobs in method_options.items():
        if name in _REGISTRY:
            try:
                _REGISTRY[name].check_knobs(knobs)
            except ValueError as err:
                problems.append(str(err))
    if problems:
        raise ValueError("\n".join(problems))


def build_method(name: str, var: VAR, options: MethodOptions) -> SamplingMethod:
    """Build method `name` for `var` under `options`."""
    return get_method(name).build(var, options)
