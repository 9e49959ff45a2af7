"""The rows of a report: which method runs on which weights.

A row is a method on one model input (`MethodSpec.runs_on`): ``full`` and the training-free methods on the released
model (``model.base``), ``variant`` on the supernet (``model.supernet``), CoDe on the base model plus
``model.refiner``. When both the base model and the supernet are given, the supernet's full network is a row of its
own (``full@supernet``): what VARiant's fine-tuning did to the full model is a result in itself. A row's id names
its output folder (``<run>/<id>/samples``) and its line in the report.

``--mode all`` runs every registered method whose inputs are configured and lists the others as skipped (the report
says why); a method named explicitly whose input is not configured is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from varianttrain.methods.registry import available_methods, get_method

SUPERNET_SUFFIX = "@supernet"


@dataclass(frozen=True)
class Row:
    """One line of the report.

    Attributes:
        id: folder and report name: the method, plus ``@supernet`` for a method outside its usual weights.
        method: the registered method name.
        weights: the model input it samples with ('base' or 'supernet').
        reference_only: timed only (every speedup needs a full model measured in the same run), not sampled.
    """

    id: str
    method: str
    weights: str
    reference_only: bool = False


@dataclass
class RowPlan:
    rows: list[Row]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (method, why) left out of --mode all
    problems: list[str] = field(default_factory=list)

    def roles(self) -> set[str]:
        """Model inputs the rows need: their weights and their methods' extra inputs (refiner)."""
        needed = {r.weights for r in self.rows}
        for r in self.rows:
            needed.update(get_method(r.method).needs)
        return needed


def requested_methods(entries: tuple[str, ...] | list[str]) -> list[tuple[str, bool]]:
    """(method, came from 'all') for every entry of ``methods`` (names, comma lists, 'all'), in order, no duplicates.

    Raises:
        KeyError: an unknown method name (the message lists the registered ones).
    """
    out: list[tuple[str, bool]] = []
    for entry in entries:
        for name in (p.strip() for p in entry.split(",")):
            if not name:
                continue
            expanded = [(n, True) for n in available_methods()] if name == "all" else [(get_method(name).name, False)]
            for n, from_all in expanded:
                if n not in [m for m, _ in out]:
                    out.append((n, from_all))
    if not out:
        raise KeyError("no method requested; use --mode all or a method name: " + ", ".join(available_methods()))
    return out


def plan_rows(entries: tuple[str, ...] | list[str], configured: dict[str, bool], reference_full: bool,
              same_weights: bool = False) -> RowPlan:
    """The rows for the requested methods given which inputs are configured (role -> path set).

    Args:
        configured: {'base': ..., 'supernet': ..., 'refiner': ...} -> whether the config names a file.
        reference_full: add a timed-only `full` row when none is sampled (every speedup needs one).
        same_weights: base and supernet are the same file: no separate ``full@supernet`` row.
    """
    plan = RowPlan(rows=[])
    flags = {"base": "--base", "supernet": "--supernet", "refiner": "--refiner"}
    for name, from_all in requested_methods(entries):
        spec = get_method(name)
        if name == "full":  # one full row per model input given
            for role, row_id in (("base", "full"), ("supernet", "full" + SUPERNET_SUFFIX)):
                if configured.get(role) and not (role == "supernet" and same_weights):
                    plan.rows.append(Row(row_id, "full", role))
            if not configured.get("base") and not configured.get("supernet"):
                plan.problems.append("full needs a model: set model.base (--base) or model.supernet (--supernet)")
            continue
        missing = [role for role in (spec.runs_on, *spec.needs) if not configured.get(role)]
        if missing:
            why = ", ".join(f"model.{role} ({flags[role]})" for role in missing)
            if from_all:
                plan.skipped.append((name, f"not configured: {why}"))
            else:
                plan.problems.append(f"method {name} runs on {why}, which the config does not set")
            continue
        plan.rows.append(Row(name, name, spec.runs_on))
    if reference_full and plan.rows and not any(r.method == "full" for r in plan.rows):
        role = "base" if configured.get("base") else "supernet"
        if configured.get(role):
            row_id = "full" if role == "base" else "full" + SUPERNET_SUFFIX
            plan.rows.append(Row(row_id, "full", role, reference_only=True))
    if not plan.rows and not plan.problems:
        reasons = "; ".join(f"{m}: {why}" for m, why in plan.skipped)
        plan.problems.append(f"no method can run: {reasons}")
    return plan
