"""Pre-flight: every input of an evaluation checked before any model is built, every problem reported at once.

What is checked (each a line of the one error, `EvalInputError`, that eval.py prints before exiting with status 2):
method names and knobs; which model inputs the requested methods need (`rows`); every weight file (present,
readable, export metadata readable, EMA weights present when asked, state dict fits its architecture, base and
supernet of one architecture, refiner fits the drafter); the VQVAE (present, codebook fits the VAR); the budget
against what the supernet stores (`budget_facts`); classes against the model; the metric inputs (extractor weights,
reference statistics against the extractor's width, reference images); the output folder (writable, room for the
samples). Weight files are memory-mapped, so this takes seconds and little memory even for VAR-d30.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from varianttrain.evaluation.budget_facts import ResolvedBudget, resolve_budget
from varianttrain.evaluation.config import EvalConfig
from varianttrain.evaluation.inputs import (
    EvalInputError,
    MetricInputs,
    VQVAEInput,
    WeightsInput,
    check_metric_inputs,
    check_output_dir,
    check_refiner,
    check_same_architecture,
    check_vqvae_fits,
    inspect_vqvae,
    inspect_weights,
)
from varianttrain.evaluation.rows import RowPlan, plan_rows
from varianttrain.evaluation.seeds import WorkItem, class_list, sample_name, work_list
from varianttrain.methods.registry import check_method_options

PNG_BYTES_PER_PIXEL = 1.8  # of 3 raw bytes: a rough upper estimate for generated images (used for the space check)


@dataclass
class Preflight:
    """Everything the run needs to know before it loads a model."""

    plan: RowPlan
    weights: dict[str, WeightsInput]  # by role: base, supernet, refiner (those the rows need)
    vqvae: VQVAEInput
    budget: ResolvedBudget
    items: list[WorkItem]
    image_size: int
    metrics: MetricInputs | None  # None: no metrics in this run
    run_dir: Path
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def model_config(self):
        return next(iter(self.weights.values())).config


def _same_file(a: Path | None, b: Path | None) -> bool:
    try:
        return a is not None and b is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def preflight(cfg: EvalConfig) -> Preflight:
    """Check every input of `cfg`; raises `EvalInputError` listing every problem."""
    problems: list[str] = []
    try:
        check_method_options(cfg.method_options)
    except ValueError as err:
        problems.append(str(err))
    m = cfg.model
    configured = {role: m.path_of(role) is not None for role in ("base", "supernet", "refiner")}
    try:
        plan = plan_rows(cfg.methods, configured, cfg.cost.enabled and cfg.cost.reference_full,
                         same_weights=_same_file(m.base, m.supernet))
    except KeyError as err:
        raise EvalInputError(err.args[0]) from None  # an unknown method: nothing else is worth checking
    problems += plan.problems
    notes = [f"{name} left out: {why}" for name, why in plan.skipped]

    weights: dict[str, WeightsInput] = {}
    for role in ("base", "supernet", "refiner"):
        if role in plan.roles() and configured[role]:
            found = inspect_weights(role, Path(m.path_of(role)), m, problems)
            if found is not None:
                weights[role] = found
                notes += found.notes
    if "base" in weights and "supernet" in weights:
        check_same_architecture(weights["base"], weights["supernet"], problems)
    if "refiner" in weights and "base" in weights:
        check_refiner(weights["base"], weights["refiner"], problems)
    main = weights.get("base") or weights.get("supernet")

    vqvae = None
    vqvae_path, source = m.vqvae, "config key model.vqvae"
    if vqvae_path is None:  # the tokenizer the supernet (or base model) was trained with
        for role in ("supernet", "base"):
            if role in weights and weights[role].vqvae_hint:
                vqvae_path, source = Path(weights[role].vqvae_hint), f"the metadata of model.{role}"
                break
    if vqvae_path is None:
        problems.append("no VQVAE given: set model.vqvae (--vqvae vae_ch160v4096z32.pth; fetch it with: python -m "
                        "varianttrain.download vqvae)")
    else:
        vqvae = inspect_vqvae(Path(vqvae_path), problems, source)
        if vqvae is not None and main is not None:
            check_vqvae_fits(vqvae, main, problems)

    budget = items = None
    image_size = 0
    warnings: list[str] = []
    if main is not None:
        config = main.config
        supernet = weights.get("supernet")
        uses_supernet = any(r.weights == "supernet" for r in plan.rows)
        runs_subnet = any(r.method == "variant" for r in plan.rows)
        note = ""
        if uses_supernet and supernet is not None and supernet.facts is None:
            note = (f"model.supernet {supernet.path} carries no VARiant metadata (a {supernet.kind}; an export's "
                    f"{supernet.path.with_suffix('.json').name} is missing: a copied .pth or an export that did not "
                    "finish?)")
        budget = resolve_budget(cfg.budget, config.depth, config.patch_nums,
                                supernet.facts if (uses_supernet and supernet) else None, runs_subnet, problems, note)
        if budget is not None:
            warnings += budget.warnings
        g = cfg.generation
        classes = class_list(g.num_classes or config.num_classes, g.classes)
        if g.num_classes is not None and g.num_classes > config.num_classes:
            problems.append(f"--num-classes {g.num_classes}: the model has {config.num_classes} classes")
        elif classes and max(classes) >= config.num_classes:
            problems.append(f"generation.classes {[c for c in classes if c >= config.num_classes]} are outside "
                            f"0..{config.num_classes - 1} of the model")
        else:
            items = work_list(classes, g.samples_per_class, g.seed, g.seed_rule)
        if vqvae is not None:
            image_size = vqvae.image_size(config.patch_nums)

    metric_inputs = None
    if cfg.metrics.enabled and not cfg.cost_only:
        metric_inputs = check_metric_inputs(cfg.metrics, main.config.num_classes if main else None, problems)

    run_dir = cfg.run_dir()
    check_output_dir(run_dir, problems, _bytes_to_write(cfg, plan, items or [], image_size, run_dir))
    if problems:
        raise EvalInputError(problems[0] if len(problems) == 1 else
                             f"{len(problems)} problems, nothing was run:\n" + "\n".join(f"- {p}" for p in problems))
    return Preflight(plan, weights, vqvae, budget, items, image_size, metric_inputs, run_dir, warnings, notes)


def _bytes_to_write(cfg: EvalConfig, plan: RowPlan, items: list[WorkItem], image_size: int, run_dir: Path) -> int:
    """Rough size of the samples still to write: PNGs not on disk yet plus the packed npz of every sampled row."""
    if cfg.cost_only or not items or not image_size:
        return 0
    raw = 3 * image_size * image_size
    total = 0
    for row in plan.rows:
        if row.reference_only:
            continue
        samples = run_dir / row.id / "samples"
        done = sum(1 for it in items if (samples / sample_name(it.label, it.index)).is_file()) if samples.is_dir() \
            else 0
        total += int((len(items) - done) * raw * PNG_BYTES_PER_PIXEL / 3)
        if cfg.generation.save_npz:
            total += len(items) * raw
    return total
