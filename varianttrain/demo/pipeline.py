"""The README's main command: the whole system on a laptop CPU, with real (small) models, in minutes.

    python demo.py [--quick] [--threads 2]

Stages (each printed as a banner with the elapsed time; Lightning / eval progress in between):

1. demo data: `data/demo` generated when missing (deterministic; reused when present);
2. the shipped models `checkpoints/demo/*` are checked against `SHA256SUMS`;
3. the demo images are tokenised by the shipped tokenizer (`data/demo_tokens`, reused when up to date) and the
   demo classifier's reference statistics of the real validation images are computed (cached next to them);
4. the shipped demo VAR is fine-tuned into a VARiant supernet with the 3-phase progressive schedule
   (`configs/demo/supernet.yaml`, through `varianttrain.training.runner.run`, the code behind train.py, with the
   same task table `varianttrain.tasks.TASKS`);
5. the supernet is exported (`varianttrain.export`);
6. `eval.py --mode all` (`configs/demo/eval.yaml`, demo-classifier FID / IS) at every depth budget;
7. one side-by-side table (full, VARiant subnets, DepthVAR / StageVAR / FastVAR / early exit at the same budgets),
   demo-classifier accuracy of the generated samples, a combined Pareto plot.

Everything lands in a fresh `runs/demo/<NNN>/` (never an existing directory): `supernet/000/` (the training run),
`export/`, `eval_d<d>/` (eval.py's samples and reports), `summary.md`, `summary.json`, `pareto.png`.
Default paths are under the repository root (`varianttrain.demo.REPO_ROOT`), so the demo runs from any directory;
the torch thread count is set by `main()` (`--threads`), not by the library functions.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varianttrain.demo import DEMO_CHECKPOINTS, DEMO_CONFIGS, DEMO_DATA, DEMO_TOKENS, REPO_ROOT

SUPERNET_CONFIG = DEMO_CONFIGS / "supernet.yaml"
EVAL_CONFIG = DEMO_CONFIGS / "eval.yaml"

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
    depths: tuple[int, ...] | None = None  # depth budgets; None = the supernet's depth choices (D/2, D/4)
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
    """The depth budgets evaluated by default: the fine-tune's `supernet.depth_choices` (D/2, D/4)."""
    from varianttrain.tasks import TASKS
    from varianttrain.training.tasks import load_run_config

    _, cfg = load_run_config(SUPERNET_CONFIG, opts.train_overrides, TASKS)
    return tuple(cfg.supernet.depth_choices)


def prepare_inputs(opts: DemoOptions, log: Callable[[str], None] = _log) -> tuple[Path, Path]:
    """Data, checksums, tokens and FID reference statistics; returns (tokens dir, reference stats npz)."""
    from varianttrain.checkpoints import load_demo_extractor
    from varianttrain.demo.artifacts import CLASSIFIER_FILE, VQVAE_FILE, sha256_file, tokenize_demo, verify_sums
    from varianttrain.demo.class_accuracy import reference_stats

    problems = verify_sums(opts.ckpt_dir)
    if problems:
        raise DemoError("the shipped demo checkpoints do not match their SHA-256 sums:\n  " + "\n  ".join(problems)
                        + f"\nrestore them (git checkout -- {opts.ckpt_dir}) or rebuild them: "
                          f"{opts.ckpt_dir}/RECIPE.md")
    log(f"[demo] {opts.ckpt_dir}: every file matches SHA256SUMS")
    tokens = tokenize_demo(opts.data_dir, Path(opts.ckpt_dir) / VQVAE_FILE, opts.tokens_dir, log=log)
    classifier = Path(opts.ckpt_dir) / CLASSIFIER_FILE
    ref = Path(opts.tokens_dir) / f"ref_stats_val_{sha256_file(classifier)[:12]}.npz"
    if not ref.is_file():
        log(f"[demo] demo-classifier statistics of the real validation images -> {ref}")
        reference_stats(opts.data_dir, load_demo_extractor(classifier), ref)
    return tokens, ref


def finetune(opts: DemoOptions, run_dir: Path) -> Path:
    """The 3-phase supernet fine-tune of the shipped demo VAR; returns its last checkpoint."""
    from varianttrain.demo.artifacts import VQVAE_FILE, var_file
    from varianttrain.tasks import TASKS
    from varianttrain.training.runner import run as train_run

    overrides = [f"run.root={run_dir}", "run.name=supernet", f"data.train_path={opts.tokens_dir}/train",
                 f"data.val_path={opts.tokens_dir}/val", f"model.var_checkpoint={var_file(opts.ckpt_dir)}",
                 f"model.vqvae_checkpoint={Path(opts.ckpt_dir) / VQVAE_FILE}"]
    overrides += (QUICK_TRAIN if opts.quick else []) + list(opts.train_overrides)
    code = train_run(SUPERNET_CONFIG, overrides, tasks=TASKS)
    if code != 0:
        raise DemoError(f"the supernet fine-tune failed (exit status {code}); see the messages above")
    ckpt = run_dir / "supernet" / "000" / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise DemoError(f"the fine-tune finished but {ckpt} is missing")
    return ckpt


def evaluate(opts: DemoOptions, export: Path, ref_stats: Path, depths: Sequence[int], run_dir: Path,
             stages: Stages) -> dict[int, dict[str, Any]]:
    """eval.py --mode all at every depth budget (one stage each); returns {depth: report}."""
    from varianttrain.evaluation.runner import build_config
    from varianttrain.evaluation.runner import run as eval_run

    reports = {}
    for d in depths:
        stages.start(f"eval.py --mode all at depth budget d = {d} (demo-classifier FID / IS, latency)")
        overrides = [f"model.var={export}", f"model.vqvae={opts.ckpt_dir}/vqvae.pth", f"budget.depth={d}",
                     f"out_dir={run_dir / f'eval_d{d}'}", f"metrics.ref_stats={ref_stats}", "metrics.ref_folder=null",
                     f"metrics.demo_classifier={opts.ckpt_dir}/classifier.pt"]
        overrides += (QUICK_EVAL if opts.quick else []) + list(opts.eval_overrides)
        report = eval_run(build_config(EVAL_CONFIG, overrides))
        if report is None:
            raise DemoError(f"eval at depth {d} returned no report")
        reports[d] = report
    return reports


# ------------------------------------------------------------------------------------------------ summary
def _row(budget: str, r: dict[str, Any], acc: dict[str, Any] | None) -> dict[str, Any]:
    costs = r.get("cost") or []
    head = max(costs, key=lambda c: c["batch_size"]) if costs else {}
    return {"budget": budget, "method": r["method"], "status": r.get("status"), "fid": r.get("fid"),
            "is": r.get("inception_score_mean"), "class_acc": (acc or {}).get("class_acc"),
            "gflops": r["flops_per_image"] / 1e9 if r.get("flops_per_image") else None,
            "flops_speedup": r.get("flops_speedup"), "batch": head.get("batch_size"), "latency_s": head.get("e2e_s"),
            "speedup": head.get("speedup"), "plan": r.get("plan"), "notes": r.get("notes")}


def summarize(reports: dict[int, dict[str, Any]], accuracies: dict[int, dict[str, Any]],
              depth: int) -> list[dict[str, Any]]:
    """One row for the full model (first budget's run), then every other method at every budget."""
    rows: list[dict[str, Any]] = []
    for i, (d, report) in enumerate(reports.items()):
        for r in report["methods"]:
            if r["method"] == "full":
                if i == 0:
                    rows.append(_row(f"D = {depth}", r, accuracies[d].get("full")))
                continue
            rows.append(_row(f"d = {d}", r, accuracies[d].get(r["method"])))
    return rows


def _f(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    batch = next((r["batch"] for r in rows if r["batch"]), None)
    lines = [f"| budget | method | demo FID ↓ | demo IS ↑ | class acc ↑ | GFLOPs/img | FLOPs speedup | "
             f"latency b={batch} (s) | measured speedup |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["method"] + ("" if r["status"] in (None, "ok") else f" ({r['status']})")
        lines.append(f"| {r['budget']} | {name} | {_f(r['fid'], '.2f')} | {_f(r['is'], '.2f')} | "
                     f"{_f(None if r['class_acc'] is None else 100 * r['class_acc'], '.1f')}"
                     f"{'' if r['class_acc'] is None else ' %'} | {_f(r['gflops'], '.4f')} | "
                     f"{_f(r['flops_speedup'], '.2f')}{'x' if r['flops_speedup'] else ''} | "
                     f"{_f(r['latency_s'], '.3f')} | {_f(r['speedup'], '.2f')}{'x' if r['speedup'] else ''} |")
    return "\n".join(lines)


def plot_summary(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Demo FID vs GFLOPs per image for every (budget, method), Pareto front dashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from varianttrain.evaluation.report import pareto_front

    pts = [(r["gflops"], r["fid"], f"{r['method']} ({r['budget']})") for r in rows
           if r["gflops"] is not None and r["fid"] is not None]
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=120)
    # One marker and colour per method (the budget is in the label), so a method reads the same at every budget.
    style = {"full": ("*", "C0"), "variant": ("o", "C1"), "depthvar": ("s", "C2"), "stagevar": ("^", "C3"),
             "fastvar": ("v", "C4"), "earlyexit": ("x", "C5")}
    seen: set[str] = set()
    for x, y, label in pts:
        method = label.split(" ")[0]
        marker, color = style.get(method, ("o", "C7"))
        ax.scatter([x], [y], marker=marker, color=color, s=80 if method == "full" else 40, zorder=3,
                   label=None if method in seen else method)
        seen.add(method)
        ax.annotate(label.split(" ", 1)[1], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if pts:
        front = pareto_front([(x, y) for x, y, _ in pts])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="gray", label="Pareto front")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("GFLOPs per image (sampling, CFG included)")
    ax.set_ylabel("demo FID (demo-classifier features; lower is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ main
def run_demo(opts: DemoOptions, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run every stage; returns the summary (also written to `<run dir>/summary.json`)."""
    import torch

    from varianttrain.checkpoints import load_demo_extractor
    from varianttrain.demo.class_accuracy import eval_dir_accuracy
    from varianttrain.demo.dataset import generate_demo_dataset
    from varianttrain.export import export_checkpoint
    from varianttrain.training.runner import new_run_dir

    depths = tuple(opts.depths or planned_depths(opts))
    stages = Stages(5 + len(depths))
    run_dir = new_run_dir(opts.out_root, "demo")  # atomic: a previous demo run is never touched
    threads = torch.get_num_threads()
    log(f"[demo] run directory {run_dir}{' (quick smoke mode)' if opts.quick else ''}; {threads} torch threads")

    stages.start(f"demo data set ({opts.data_dir}; generated when missing, reused when present)")
    manifest = generate_demo_dataset(opts.data_dir, per_class=opts.per_class, per_class_val=opts.per_class_val)
    log(f"[demo] {manifest['counts']} images, content sha256 {manifest['content_sha256'][:16]}...")

    stages.start("shipped models: SHA-256 check, tokenised demo images, FID reference statistics")
    _, ref_stats = prepare_inputs(opts, log)

    stages.start(f"VARiant supernet fine-tune of the demo VAR ({SUPERNET_CONFIG}, 3-phase progressive schedule)")
    ckpt = finetune(opts, run_dir)

    stages.start("export the supernet (varianttrain.export)")
    paths = export_checkpoint(ckpt, run_dir / "export", formats=("pth",))
    export = next(p for p in paths if p.suffix == ".pth")
    meta = json.loads(export.with_suffix(".json").read_text())
    log(f"[demo] {export}: depth {meta['depth']}, subnets {meta['layer_subsets']}, bridge N = {meta['bridge_scales']}")

    reports = evaluate(opts, export, ref_stats, depths, run_dir, stages)

    stages.start("side-by-side table, class accuracy of the samples, Pareto plot")
    extractor = load_demo_extractor(Path(opts.ckpt_dir) / "classifier.pt")
    accuracies = {d: eval_dir_accuracy(run_dir / f"eval_d{d}", extractor) for d in depths}
    rows = summarize(reports, accuracies, meta["depth"])
    table = markdown_table(rows)
    plot = plot_summary(rows, run_dir / "pareto.png", f"demo: depth-{meta['depth']} VAR supernet vs accelerators "
                                                       f"at d = {', '.join(map(str, depths))}")
    stages.finish()
    wall = stages.elapsed()
    protocol = reports[depths[0]]["protocol"]
    text = "\n".join([
        f"# Demo run {run_dir}", "",
        f"Wall time {wall:.0f} s ({wall / 60:.1f} min){' — quick smoke mode' if opts.quick else ''}; "
        f"{threads} torch threads; {protocol['samples']}; sampling {protocol['sampling_protocol']}; "
        f"device {protocol['device']}.", "",
        f"Demo FID / IS use the demo classifier ({opts.ckpt_dir}/classifier.pt), not Inception: comparable only "
        "within the demo. Class acc: the demo classifier's accuracy on the generated samples (chance 10 %). "
        "Latency: end-to-end median per batch, CPU; speedups are full's latency / the method's.", "",
        table, "",
        "Stage times: " + ", ".join(f"{k.split(' (')[0]}: {v:.0f} s" for k, v in stages.times.items()), "",
        f"Per-budget reports: {', '.join(str(run_dir / f'eval_d{d}' / 'report.md') for d in depths)}; "
        f"plot: {plot}"])
    (run_dir / "summary.md").write_text(text + "\n")
    summary = {"run_dir": str(run_dir), "wall_s": wall, "quick": opts.quick, "depths": list(depths), "rows": rows,
               "stage_s": stages.times, "export": str(export), "plot": str(plot),
               "accuracy": {str(d): a for d, a in accuracies.items()}}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log("\n" + text)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """CLI of `python demo.py`; exit status 0, or 2 when a stage fails with a known cause."""
    import argparse

    parser = argparse.ArgumentParser(description="The built-in demo: fine-tune the shipped demo VAR into a VARiant "
                                                 "supernet and compare it with the accelerators (docs/DEMO.md).")
    parser.add_argument("--quick", action="store_true", help="smoke mode: a few steps and samples (tests)")
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
    opts = DemoOptions(quick=args.quick, depths=tuple(args.depths) if args.depths else None,
                       out_root=str(Path(args.out_root).resolve()), train_overrides=args.train_set,
                       eval_overrides=args.eval_set)
    try:
        run_demo(opts)
    except (DemoError, FileNotFoundError, FileExistsError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    return 0
