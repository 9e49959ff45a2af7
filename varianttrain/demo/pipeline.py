"""The README's main command: the whole system on a laptop CPU, with real (small) models, in minutes.

    python demo.py [--quick] [--threads 2]

Stages (each printed as a banner with the elapsed time; Lightning / eval progress in between):

1. demo data: `data/demo` generated when missing (deterministic; reused when present);
2. the shipped models `checkpoints/demo/*` are checked against `SHA256SUMS`;
3. the demo images are tokenised by the shipped tokenizer (`data/demo_tokens`, reused when up to date) and the
   demo classifier's reference statistics of the real validation images are computed (cached next to them);
4. the VARiant fine-tune of the shipped demo VAR (`configs/demo/supernet.yaml`, through
   `varianttrain.training.runner.run`, the code behind train.py, with the same task table `varianttrain.tasks.TASKS`):
   its first `FINETUNE_STEPS` steps by default, with the recipe's phases scaled down (the whole recipe takes ~25 min
   on 2 cores, more than the demo's 10-minute budget); the evaluation then uses the shipped supernet, which is that
   recipe run to the end (checkpoints/demo/RECIPE.md). `--full-finetune` trains the whole recipe and evaluates it;
5. the fine-tuned supernet is exported (`varianttrain.export`);
6. `eval.py --mode all` (`configs/demo/eval.yaml`: demo-classifier FID / IS / class accuracy with their noise, and
   model-only / end-to-end latency of every row in interleaved rounds) at every depth budget: full and the
   training-free methods on the shipped VAR (CoDe with the shipped refiner), variant on the supernet;
7. one summary over the budgets (`varianttrain.evaluation.summary`): a table and quality vs FLOPs / latency / memory,
   the share of model-only time spent in the transformer blocks, and how much of its FLOP speedup the smallest
   VARiant subnet turns into time.

Everything lands in a fresh `runs/demo/<NNN>/` (never an existing directory): `supernet/000/` (the training run),
`export/`, `eval/d<d>/` (eval.py's samples, reports, plot and grid per budget), `summary/` (the summary and its
plots), `summary.md`, `summary.json`.
Default paths are under the repository root (`varianttrain.demo.REPO_ROOT`), so the demo runs from any directory;
the torch thread count is set by `main()` (`--threads`), not by the library functions.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from varianttrain.demo import DEMO_CHECKPOINTS, DEMO_CONFIGS, DEMO_DATA, DEMO_TOKENS, REPO_ROOT

SUPERNET_CONFIG = DEMO_CONFIGS / "supernet.yaml"
EVAL_CONFIG = DEMO_CONFIGS / "eval.yaml"
FINETUNE_STEPS = 30  # the demo's share of the supernet recipe (~1 min on 2 cores); --full-finetune runs all of it
QUICK_DATA = REPO_ROOT / "data" / "demo_quick"  # --quick works on a small data set of its own (tokenised in seconds)
QUICK_TOKENS = REPO_ROOT / "data" / "demo_quick_tokens"
QUICK_PER_CLASS = (20, 10)  # train / validation images per class of the --quick data set
TIMING_TARGET = 0.8  # the demo's goal: the smallest VARiant subnet turns >= 80 % of its FLOP speedup into time

# --quick: a smoke run of every stage (tests): a few optimizer steps, 2 samples per class, tiny timing.
QUICK_TRAIN = ["trainer.max_steps=4", "trainer.ckpt_every_n_steps=4", "trainer.log_every_n_steps=1",
               "supernet.schedule.phase1=1", "supernet.schedule.phase2=2",
               "data.batch_size=16", "validation.every_n_steps=0", "trainer.progress_refresh=1"]
QUICK_EVAL = ["generation.samples_per_class=2", "generation.batch_size=20", "cost.batch_sizes=[1, 2]",
              "cost.warmup=0", "cost.repeats=1", "metrics.is_splits=2"]


@dataclass
class DemoOptions:
    """What `python demo.py` does; defaults are the full demo."""

    quick: bool = False
    full_finetune: bool = False  # train the whole supernet recipe and evaluate it (else FINETUNE_STEPS + shipped)
    depths: tuple[int, ...] | None = None  # depth budgets; None = the supernet's depth choices
    out_root: str = str(REPO_ROOT / "runs")  # the run lands in <out_root>/demo/<NNN>
    train_overrides: list[str] = field(default_factory=list)  # extra --set for the fine-tune
    eval_overrides: list[str] = field(default_factory=list)  # extra --set for eval.py
    data_dir: str | Path = DEMO_DATA
    ckpt_dir: str | Path = DEMO_CHECKPOINTS
    tokens_dir: str | Path = DEMO_TOKENS
    per_class: int = 500  # demo data set size (tests use a tiny one in a temporary folder)
    per_class_val: int = 50


class DemoError(RuntimeError):
    """A stage failed; the message says which and what to do."""


class Stages:
    """Numbered stage banners with the elapsed wall time (progress must be visible throughout)."""

    def __init__(self, total: int, out: Callable[[str], None] = print):
        self.total, self.index, self.t0, self.out = total, 0, time.perf_counter(), out
        self.times: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def start(self, title: str) -> None:
        self._close()
        self.index += 1
        self.out(f"\n{'=' * 100}\n[demo {self.index}/{self.total}] {title}   (elapsed {self.elapsed():.0f} s)\n"
                 f"{'=' * 100}")
        self._current = (title, time.perf_counter())

    def _close(self) -> None:
        if self._current is not None:
            title, t = self._current
            self.times[title] = time.perf_counter() - t
            self._current = None

    def finish(self) -> None:
        self._close()


def _log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ stages
def planned_depths(opts: DemoOptions) -> tuple[int, ...]:
    """The depth budgets evaluated by default: the fine-tune's `supernet.depth_choices`."""
    from varianttrain.tasks import TASKS
    from varianttrain.training.tasks import load_run_config

    _, cfg = load_run_config(SUPERNET_CONFIG, opts.train_overrides, TASKS)
    return tuple(cfg.supernet.depth_choices)


def prepare_inputs(opts: DemoOptions, log: Callable[[str], None] = _log) -> tuple[Path, Path]:
    """Data, checksums, tokens and FID reference statistics; returns (tokens dir, reference stats npz)."""
    from varianttrain.checkpoints import load_demo_extractor
    from varianttrain.demo.artifacts import CLASSIFIER_FILE, VQVAE_FILE, tokenize_demo, verify_sums
    from varianttrain.demo.class_accuracy import reference_stats
    from varianttrain.file_hash import sha256_file

    problems = verify_sums(opts.ckpt_dir)
    if problems:
        raise DemoError("the shipped demo checkpoints do not match their SHA-256 sums:\n  " + "\n  ".join(problems)
                        + f"\nrestore them (git checkout -- {opts.ckpt_dir}) or rebuild them: "
                          f"{opts.ckpt_dir}/RECIPE.md")
    log(f"[demo] {opts.ckpt_dir}: every file matches SHA256SUMS")
    # No mirrored copies: the demo's fine-tune sees ~1 000 sequences, and tokenising is the slowest part of a first
    # run (the shipped models were trained on their own, mirrored token set: RECIPE.md).
    tokens = tokenize_demo(opts.data_dir, Path(opts.ckpt_dir) / VQVAE_FILE, opts.tokens_dir, flip_train=False,
                           log=log)
    classifier = Path(opts.ckpt_dir) / CLASSIFIER_FILE
    ref = Path(opts.tokens_dir) / f"ref_stats_val_{sha256_file(classifier)[:12]}.npz"
    if not ref.is_file():
        log(f"[demo] demo-classifier statistics of the real validation images -> {ref}")
        reference_stats(opts.data_dir, load_demo_extractor(classifier), ref)
    return tokens, ref


def short_finetune_overrides(steps: int) -> list[str]:
    """The recipe's first `steps` steps with its three phases scaled to them (1/6, 1/2, 1/3 of the run, as in
    configs/demo/supernet.yaml), so that the short run passes through every phase; no validation, one checkpoint."""
    p1 = max(1, steps // 6)
    return [f"trainer.max_steps={steps}", f"trainer.ckpt_every_n_steps={steps}", f"supernet.schedule.phase1={p1}",
            f"supernet.schedule.phase2={max(1, steps // 2)}", "validation.every_n_steps=0",
            f"trainer.log_every_n_steps={max(1, steps // 6)}", "trainer.progress_refresh=1"]


def finetune(opts: DemoOptions, run_dir: Path) -> Path:
    """The supernet fine-tune of the shipped demo VAR (short or whole, see DemoOptions); returns its last checkpoint."""
    from varianttrain.demo.artifacts import VQVAE_FILE, var_file
    from varianttrain.tasks import TASKS
    from varianttrain.training.runner import run as train_run

    overrides = [f"run.root={run_dir}", "run.name=supernet", f"data.train_path={opts.tokens_dir}/train",
                 f"data.val_path={opts.tokens_dir}/val", f"model.var_checkpoint={var_file(opts.ckpt_dir)}",
                 f"model.vqvae_checkpoint={Path(opts.ckpt_dir) / VQVAE_FILE}"]
    if opts.quick:
        overrides += QUICK_TRAIN
    elif not opts.full_finetune:
        overrides += short_finetune_overrides(FINETUNE_STEPS)
    code = train_run(SUPERNET_CONFIG, overrides + list(opts.train_overrides), tasks=TASKS)
    if code != 0:
        raise DemoError(f"the supernet fine-tune failed (exit status {code}); see the messages above")
    ckpt = run_dir / "supernet" / "000" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise DemoError(f"the fine-tune finished but {ckpt} is missing")
    return ckpt


def evaluate(opts: DemoOptions, export: Path, ref_stats: Path, depths: Sequence[int], run_dir: Path,
             stages: Stages) -> dict[int, dict[str, Any]]:
    """eval.py --mode all at every depth budget (one stage each); returns {depth: report}.

    The same rule as on ImageNet: full and the training-free methods run on the shipped pre-trained VAR (the
    "released" model of the demo), `variant` on the supernet, and both full models are rows. CoDe runs with the
    shipped refiner (`refiner_d<D>.pth` next to the VAR) or one given with ``--eval-set model.refiner=...``; with
    neither, the report says it was left out.
    """
    from varianttrain.demo.artifacts import CLASSIFIER_FILE, VQVAE_FILE, var_file
    from varianttrain.evaluation.runner import build_config
    from varianttrain.evaluation.runner import run as eval_run

    ckpt = Path(opts.ckpt_dir)
    reports = {}
    for d in depths:
        stages.start(f"eval.py --mode all at depth budget d = {d} (demo-classifier FID / IS / class accuracy, latency)")
        overrides = [f"model.base={var_file(ckpt)}", f"model.supernet={export}", f"model.vqvae={ckpt / VQVAE_FILE}",
                     f"budget.depth={d}", f"out_dir={run_dir / 'eval'}", f"metrics.ref_stats={ref_stats}",
                     "metrics.ref_folder=null", f"metrics.demo_classifier={ckpt / CLASSIFIER_FILE}"]
        refiners = sorted(ckpt.glob("refiner_d*.pth"))  # CoDe's refiner, when the demo ships one
        overrides += [f"model.refiner={refiners[0]}" if len(refiners) == 1 else "model.refiner=null"]
        overrides += (QUICK_EVAL if opts.quick else []) + list(opts.eval_overrides)
        report = eval_run(build_config(EVAL_CONFIG, overrides))
        if report is None:
            raise DemoError(f"eval at depth {d} returned no report")
        reports[d] = report
    return reports


# ------------------------------------------------------------------------------------------------ main
def run_demo(opts: DemoOptions, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run every stage; returns the summary (also written to `<run dir>/summary.json`)."""
    import torch

    from varianttrain.demo.dataset import generate_demo_dataset
    from varianttrain.export import export_checkpoint
    from varianttrain.training.runner import new_run_dir

    # --quick: the smallest budget only (every stage still runs once; three budgets would take it past a minute)
    depths = tuple(opts.depths or ((min(planned_depths(opts)),) if opts.quick else planned_depths(opts)))
    stages = Stages(5 + len(depths))
    run_dir = new_run_dir(opts.out_root, "demo")  # atomic: a previous demo run is never touched
    threads = torch.get_num_threads()
    log(f"[demo] run directory {run_dir}{' (quick smoke mode)' if opts.quick else ''}; {threads} torch threads")

    stages.start(f"demo data set ({opts.data_dir}; generated when missing, reused when present)")
    manifest = generate_demo_dataset(opts.data_dir, per_class=opts.per_class, per_class_val=opts.per_class_val)
    log(f"[demo] {manifest['counts']} images, content sha256 {manifest['content_sha256'][:16]}...")

    stages.start("shipped models: SHA-256 check, tokenised demo images, FID reference statistics")
    _, ref_stats = prepare_inputs(opts, log)

    how = ("the whole recipe" if opts.full_finetune else
           "smoke steps" if opts.quick else f"its first {FINETUNE_STEPS} steps, phases scaled")
    stages.start(f"VARiant supernet fine-tune of the demo VAR ({SUPERNET_CONFIG.name}, 3-phase progressive "
                 f"schedule: {how})")
    ckpt = finetune(opts, run_dir)

    stages.start("export the supernet (varianttrain.export)")
    paths = export_checkpoint(ckpt, run_dir / "export", formats=("pth",))
    export = next(p for p in paths if p.suffix == ".pth")
    meta = json.loads(export.with_suffix(".json").read_text())
    log(f"[demo] {export}: depth {meta['depth']}, subnets {meta['layer_subsets']}, bridge N = {meta['bridge_scales']}")
    from varianttrain.demo.artifacts import supernet_file

    evaluated = export if opts.full_finetune else supernet_file(opts.ckpt_dir)
    if evaluated != export:
        log(f"[demo] evaluating the shipped supernet {evaluated} (the same recipe run to the end); "
            "--full-finetune evaluates your own")

    reports = evaluate(opts, evaluated, ref_stats, depths, run_dir, stages)

    stages.start("summary over the budgets: one table; quality vs FLOPs, latency and memory; timing figures")
    from varianttrain.evaluation.summary import summarize

    result = summarize([reports[d]["files"]["json"] for d in depths], run_dir / "summary")
    table = "\n".join(line for line in (run_dir / "summary" / "summary.md").read_text().splitlines()
                      if line.startswith("|"))
    timing = timing_figures(opts, reports, depths)
    stages.finish()
    wall = stages.elapsed()
    protocol = reports[depths[0]]["protocol"]
    skipped = sorted({f"{s['method']} ({s['why']})" for r in reports.values() for s in r.get("skipped") or []})
    text = "\n".join([
        f"# Demo run {run_dir}", "",
        f"Wall time {wall:.0f} s ({wall / 60:.1f} min){' — quick smoke mode' if opts.quick else ''}; "
        f"{threads} torch threads; {protocol['samples']}; sampling {protocol['sampling_protocol']}; "
        f"device {protocol['device']}.", "",
        f"Rows: full and the training-free methods on the shipped demo VAR ({var_file_name(opts)}), variant and "
        f"full@supernet on the supernet ({evaluated.name}). Demo FID / IS / class accuracy use the demo "
        f"classifier ({Path(opts.ckpt_dir).name}/classifier.pt), not Inception: comparable only within the demo "
        "(class accuracy: chance 10 %). ± is a bootstrap standard error over the images. Latency: CPU medians per "
        "batch, every row of a budget timed in the same interleaved rounds; a speedup is the median of per-round "
        "ratios to the full model, in brackets the same from the even and the odd rounds alone (how much it moves "
        "between runs)." + (f" Left out: {'; '.join(skipped)}." if skipped else ""), "",
        table, "", *timing["lines"], "",
        "Stage times: " + ", ".join(f"{k.split(' (')[0]}: {v:.0f} s" for k, v in stages.times.items()), "",
        f"Per-budget reports: {', '.join(str(reports[d]['files']['markdown']) for d in depths)}; summary with its "
        f"plots: {run_dir / 'summary' / 'summary.md'}"])
    (run_dir / "summary.md").write_text(text + "\n")
    summary = {"run_dir": str(run_dir), "wall_s": wall, "quick": opts.quick, "depths": list(depths),
               "rows": result["rows"], "plots": [str(run_dir / "summary" / p) for p in result["plots"]],
               "reports": {str(d): reports[d]["files"]["json"] for d in depths}, "stage_s": stages.times,
               "export": str(export), "evaluated_supernet": str(evaluated), "timing": timing["figures"]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log("\n" + text)
    return summary


def timing_figures(opts: DemoOptions, reports: dict[int, dict[str, Any]], depths: Sequence[int]) -> dict[str, Any]:
    """Does layer skipping pay off in time here? The share of the full model's model-only time spent in the
    transformer blocks at the timed batch size, and per budget the VARiant row's measured speedups against its FLOP
    speedup (model-only measured / FLOPs; the demo's goal, TIMING_TARGET, is >= 0.8 at the smallest depth)."""
    import torch

    from varianttrain.demo.artifacts import load_demo_models
    from varianttrain.evaluation.cost import block_time_share
    from varianttrain.evaluation.report import headline_cost
    from varianttrain.sampling.config import SamplingConfig

    figures: dict[str, Any] = {"variant": {}}
    lines = []
    first = reports[depths[0]]
    full = next((r for r in first["rows"] if r["method"] == "full" and headline_cost(r)), None)
    if full is not None:
        batch = headline_cost(full)["batch_size"]
        models = load_demo_models(opts.ckpt_dir)
        with torch.inference_mode():
            share = block_time_share(models.var, models.vqvae, SamplingConfig.preset(first["protocol"][
                "sampling_protocol"]), batch, repeats=1 if opts.quick else 3)
        figures.update(block_share=share, batch=batch)
        lines.append(f"Transformer blocks: {100 * share:.0f} % of the full model's model-only sampling time at batch "
                     f"{batch}; the rest (the output head, top-p filtering and token draws, the Python around them) is "
                     "the same for every method, so it caps the measured speedups below the FLOP speedups.")
    for d in sorted(depths, reverse=True):
        row = next((r for r in reports[d]["rows"] if r["method"] == "variant"), None)
        c = headline_cost(row) if row else None
        if not c or not row.get("flops_speedup") or c.get("speedup_model") is None:
            continue
        ratio = c["speedup_model"] / row["flops_speedup"]
        figures["variant"][d] = {"flops_speedup": row["flops_speedup"], "speedup_model": c["speedup_model"],
                                 "speedup_e2e": c.get("speedup"), "model_over_flops": ratio,
                                 "halves": c.get("speedup_model_halves")}
        verdict = ""
        if d == min(depths):
            met = ratio >= TIMING_TARGET
            figures["target_met"] = met
            verdict = f" — target >= {TIMING_TARGET}: {'met' if met else 'NOT met'}"
        lines.append(f"VARiant d = {d}: FLOP speedup {row['flops_speedup']:.2f}x, measured model-only "
                     f"{c['speedup_model']:.2f}x ({ratio:.2f} of it){verdict}, end-to-end {c.get('speedup') or 0:.2f}x "
                     "(the VQVAE decoder is not accelerated).")
    return {"figures": figures, "lines": lines}


def var_file_name(opts: DemoOptions) -> str:
    from varianttrain.demo.artifacts import var_file

    return var_file(opts.ckpt_dir).name


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of `python demo.py`; exit status 0, or 2 when a stage fails with a known cause."""
    import argparse

    parser = argparse.ArgumentParser(description="The built-in demo: fine-tune the shipped demo VAR into a VARiant "
                                                 "supernet and compare it with the accelerators (docs/DEMO.md).")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: a small data set of its own, a few steps and samples (< 1 min)")
    parser.add_argument("--full-finetune", action="store_true",
                        help="train the whole supernet recipe (~25 min on 2 cores) and evaluate it instead of the "
                             "shipped supernet")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--depths", type=int, nargs="+", default=None,
                        help="depth budgets to evaluate (default: the supernet's depth choices)")
    parser.add_argument("--out-root", default=str(REPO_ROOT / "runs"),
                        help="the run goes to <out-root>/demo/<NNN> (default: the repository's runs/)")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a fine-tune config value (repeatable)")
    parser.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an eval config value (repeatable)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # process-wide: the entry point's decision (the demo is sized for 2 cores)
    opts = DemoOptions(quick=args.quick, full_finetune=args.full_finetune,
                       depths=tuple(args.depths) if args.depths else None,
                       out_root=str(Path(args.out_root).resolve()), train_overrides=args.train_set,
                       eval_overrides=args.eval_set)
    if args.quick:  # its own small data set: tokenising the full one alone takes longer than a minute
        opts = replace(opts, data_dir=QUICK_DATA, tokens_dir=QUICK_TOKENS, per_class=QUICK_PER_CLASS[0],
                       per_class_val=QUICK_PER_CLASS[1])
    from varianttrain.evaluation.inputs import EvalInputError

    try:
        run_demo(opts)
    except (DemoError, EvalInputError, FileNotFoundError, FileExistsError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0
