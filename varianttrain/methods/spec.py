"""What a method module declares (`MethodSpec`) and what its factory receives (`MethodOptions`).

A method module defines a `SamplingMethod`, a factory ``(var, options) -> SamplingMethod`` that sets the method's
`budget_match`, and one `MethodSpec` naming both, the knobs it understands and a check of their values that needs
no model (so a bad ``method_options`` entry fails when the config is read, before any weights are loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from varianttrain.methods.budget import DepthBudget
from varianttrain.models.var import VAR
from varianttrain.sampling.sampler import SamplingMethod


@dataclass(frozen=True)
class MethodOptions:
    """What a factory gets besides the model.

    Attributes:
        budget: the compute budget (`varianttrain.methods.budget`).
        knobs: ``method_options.<name>`` from the eval config (method-specific overrides; may be empty).
        refiner: the second model of two-model methods (CoDe), from ``model.refiner``; None when not given.
    """

    budget: DepthBudget
    knobs: Mapping[str, Any] = field(default_factory=dict)
    refiner: VAR | None = None  # a second, smaller VAR on the same VQVAE (model.refiner; CoDe)


MethodFactory = Callable[[VAR, MethodOptions], SamplingMethod]
KnobCheck = Callable[[Mapping[str, Any]], None]
RunsOn = Literal["base", "supernet"]
EXTRA_INPUTS = ("refiner",)  # model inputs a method may need besides the one it runs on


@dataclass(frozen=True)
class MethodSpec:
    """A method by name: its factory, a one-line help, the knobs it understands and the check of their values.

    Attributes:
        knobs: every knob name the factory reads; anything else in ``method_options.<name>`` is refused.
        check_values: raises `ValueError` naming the knob for a value the method cannot run (model-independent
            checks only; limits that depend on the model, such as a block index, are checked by the factory).
        runs_on: the weights the method samples with: ``base`` (the released model, ``model.base``: published
            training-free methods run on it) or ``supernet`` (the VARiant supernet, ``model.supernet``).
        needs: further model inputs, e.g. ``("refiner",)`` (``model.refiner``); checked before any model is built.
    """

    name: str
    factory: MethodFactory
    help: str
    knobs: tuple[str, ...] = ()
    check_values: KnobCheck | None = None
    needs: tuple[str, ...] = ()
    runs_on: RunsOn = "base"

    def __post_init__(self) -> None:
        if self.runs_on not in ("base", "supernet"):
            raise ValueError(f"method {self.name!r}: runs_on={self.runs_on!r}; expected 'base' or 'supernet'")
        unknown = [n for n in self.needs if n not in EXTRA_INPUTS]
        if unknown:
            raise ValueError(f"method {self.name!r}: needs {unknown}; known extra inputs: {list(EXTRA_INPUTS)}")

    def check_knobs(self, knobs: Mapping[str, Any]) -> None:
        """Refuse unknown knobs and wrong values, without building anything."""
        if not isinstance(knobs, Mapping):
            raise ValueError(f"method_options.{self.name} must map knob names to values, got {knobs!r}")
        unknown = [k for k in knobs if k not in self.knobs]
        if unknown:
            given = ", ".join(f"{k}={knobs[k]!r}" for k in unknown)
            understood = ", ".join(self.knobs) if self.knobs else "no knobs"
            raise ValueError(f"method_options.{self.name}: unknown knob(s) {given}; {self.name} understands "
                             f"{understood}")
        if self.check_values is not None:
            self.check_values(knobs)

    def build(self, var: VAR, options: MethodOptions) -> SamplingMethod:
        """The method for `var` under `options`; its `budget_match` says how it meets the budget."""
        self.check_knobs(options.knobs)
        method = self.factory(var, options)
        if not isinstance(method, SamplingMethod):
            raise TypeError(f"factory of method {self.name!r} returned {type(method).__name__}, not a SamplingMethod")
        if method.budget_match is None:
            raise TypeError(f"factory of method {self.name!r} did not set budget_match: every factory reports its "
                            "FLOPs against the budget (DepthBudget.match)")
        method.name = self.name
        return method


# ----------------------------------------------------------------------------------------- knob value checks
def knob_error(method: str, knob: str, value: Any, expected: str) -> ValueError:
    """The one wording of a bad knob value: where it is set, what was given, what would work."""
    return ValueError(f"method_options.{method}.{knob}={value!r}; expected {expected}")


def is_int(value: Any) -> bool:
    """An integer knob (YAML `true` is a bool, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(method: str, knobs: Mapping[str, Any], knob: str, minimum: int) -> None:
    if knob in knobs and not (is_int(knobs[knob]) and knobs[knob] >= minimum):
        raise knob_error(method, knob, knobs[knob], f"an integer >= {minimum}")


def check_choice(method: str, knobs: Mapping[str, Any], knob: str, choices: tuple) -> None:
    if knob in knobs and knobs[knob] not in choices:
        raise knob_error(method, knob, knobs[knob], f"one of {list(choices)}")


def check_int_list(method: str, knobs: Mapping[str, Any], knob: str, minimum: int, length: int | None = None) -> None:
    """A list of integers >= minimum (of `length` items when given)."""
    if knob not in knobs:
        return
    value = knobs[knob]
    ok = isinstance(value, (list, tuple)) and all(is_int(v) and v >= minimum for v in value)
    if not ok or (length is not None and len(value) != length):
        size = f"{length} " if length is not None else ""
        raise knob_error(method, knob, value, f"a list of {size}integers >= {minimum}")
