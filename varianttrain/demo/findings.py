"""The papers' findings in miniature, on the shipped demo models (each prints a Markdown table and saves a plot).

    python -m varianttrain.demo.findings asymmetry [--quick]
    python -m varianttrain.demo.findings ratio [--quick]
    python -m varianttrain.demo.findings skipping [--quick] [--supernet EXPORT.pth]

* `asymmetry` (scale-depth asymmetry): the pre-trained demo VAR with half of its blocks (the nested subset I_{D/2})
  at the early scales only, the middle scale only, or the late scale only, versus quality and FLOPs. The VARiant
  paper's observation: the early scales need the full depth, the late ones (most of the tokens and FLOPs) do not.
* `ratio` (fixed subnet ratio vs progressive schedule): the shipped VAR fine-tuned for the same number of steps with
  p = 0.1 fixed, p = 1.0 fixed and the 3-phase progressive schedule; quality of the full network and of the subnets.
* `skipping` (equal FLOPs): the VARiant subnet (supernet-trained) vs DepthVAR (training-free, on the pre-trained VAR)
  vs naive layer skipping (the same subnet plan on the pre-trained VAR, no supernet training) vs early exit, at the
  FLOPs of d = D/2 and D/4.

Quality: demo FID / IS (demo-classifier features / logits against the real validation images) and the classifier's
accuracy on the samples (chance 10 %); every configuration samples the same (class, index, seed) list. Outputs:
`runs/findings/<name>/<NNN>/{table.md, results.json, <name>.png}` (a fresh directory each time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints import load_exported_var
from varianttrain.demo import DEMO_CHECKPOINTS, DEMO_CONFIGS, DEMO_DATA, DEMO_TOKENS, REPO_ROOT
from varianttrain.demo.pipeline import QUICK_TRAIN, SUPERNET_CONFIG

FINDINGS = ("asymmetry", "ratio", "skipping")
# label -> (run name, fine-tune config); all three train the same number of steps from the shipped VAR.
RATIO_CONFIGS = {"p = 0.1 fixed": ("fixed_p0.1", DEMO_CONFIGS / "supernet_fixed_p0.1.yaml"),
                 "p = 1.0 fixed": ("fixed_p1.0", DEMO_CONFIGS / "supernet_fixed_p1.0.yaml"),
                 "progressive (3-phase)": ("progressive", SUPERNET_CONFIG)}


def _log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class Evaluator:
    """Samples a method on a fixed class-balanced (class, index, seed) list and scores it with the demo classifier."""

    vqvae: Any
    extractor: Any
    ref: Any  # ReferenceStats of the real validation images
    samples_per_class: int = 50
    num_classes: int = 10
    batch: int = 50
    seed: int = 0
    protocol: str = "official"
    is_splits: int = 5

    def with_seed(self, seed: int) -> Evaluator:
        """The same evaluator on another seed list (how much the metrics move between two sample sets)."""
        return dataclasses.replace(self, seed=seed)

    @torch.inference_mode()
    def __call__(self, var: Any, method: Any) -> dict[str, Any]:
        from varianttrain.evaluation.images import to_uint8
        from varianttrain.evaluation.metrics import MetricsAccumulator
        from varianttrain.evaluation.seeds import work_list
        from varianttrain.sampling.config import SamplingConfig
        from varianttrain.sampling.rng import TokenRNG
        from varianttrain.sampling.sampler import generate

        items = work_list(list(range(self.num_classes)), self.samples_per_class, self.seed)
        sampling = SamplingConfig.preset(self.protocol)
        acc = MetricsAccumulator(self.extractor, keep_logits=True, batch_size=100)
        correct, flops, t0 = 0, 0, time.perf_counter()
        for i in range(0, len(items), self.batch):
            chunk = items[i:i + self.batch]
            label_B = torch.tensor([it.label for it in chunk])
            out = generate(var, self.vqvae, label_B, sampling, TokenRNG.per_image([it.seed for it in chunk]), method)
            images = to_uint8(out.images_B3HW)
            acc.update(images, torch.tensor([it.global_index for it in chunk]))
            correct += int((self.extractor(images)[1].argmax(-1) == label_B).sum())
            flops += out.flops
        metrics = acc.compute(ref=self.ref, is_splits=min(self.is_splits, len(items)))
        return {"fid": metrics["fid"], "is": metrics["inception_score_mean"], "class_acc": correct / len(items),
                "gflops": flops / len(items) / 1e9, "num_samples": len(items), "seconds": time.perf_counter() - t0}


@dataclass
class Setup:
    """Where a finding reads its inputs and how big it is (tests point the paths at a tiny data set)."""

    quick: bool = False
    log: Callable[[str], None] = _log
    data_dir: str | Path = DEMO_DATA
    tokens_dir: str | Path = DEMO_TOKENS
    ckpt_dir: str | Path = DEMO_CHECKPOINTS
    per_class: int = 500  # demo data set size (generated when missing; the default is the full demo set)
    per_class_val: int = 50


def make_evaluator(setup: Setup) -> tuple[Evaluator, Any]:
    """(evaluator, pre-trained demo VAR); data, tokens and reference statistics are prepared as by demo.py."""
    from varianttrain.demo.artifacts import load_demo_models
    from varianttrain.demo.dataset import generate_demo_dataset
    from varianttrain.demo.pipeline import DemoOptions, prepare_inputs
    from varianttrain.evaluation.metrics import load_reference_stats

    generate_demo_dataset(setup.data_dir, per_class=setup.per_class, per_class_val=setup.per_class_val)
    _, ref_path = prepare_inputs(DemoOptions(data_dir=setup.data_dir, ckpt_dir=setup.ckpt_dir,
                                             tokens_dir=setup.tokens_dir), setup.log)
    models = load_demo_models(setup.ckpt_dir)
    quick = setup.quick
    ev = Evaluator(models.vqvae, models.extractor, load_reference_stats(ref_path),
                   samples_per_class=2 if quick else 50, batch=20 if quick else 50, is_splits=2 if quick else 5)
    return ev, models.var


def static(plan: Any, name: str) -> Any:
    from varianttrain.sampling.sampler import StaticPlanMethod

    return StaticPlanMethod(plan, name=name)


def train_supernet(config: str | Path, run_root: Path, name: str, setup: Setup) -> Path:
    """Fine-tune the shipped demo VAR with `config` (train.py machinery) and export it; returns the export .pth."""
    from varianttrain.demo.artifacts import var_file
    from varianttrain.export import export_checkpoint
    from varianttrain.tasks import TASKS
    from varianttrain.training.runner import run as train_run

    setup.log(f"[findings] fine-tune: {config} -> {run_root / name}")
    overrides = [f"run.root={run_root}", f"run.name={name}", f"data.train_path={setup.tokens_dir}/train",
                 f"data.val_path={setup.tokens_dir}/val", f"model.var_checkpoint={var_file(setup.ckpt_dir)}",
                 f"model.vqvae_checkpoint={setup.ckpt_dir}/vqvae.pth"]
    code = train_run(config, overrides + (QUICK_TRAIN if setup.quick else []), tasks=TASKS)
    if code != 0:
        raise RuntimeError(f"fine-tune {config} failed with exit status {code}")
    run_dir = sorted((run_root / name).iterdir())[-1]
    paths = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", run_dir / "export", formats=("pth",))
    return next(p for p in paths if p.suffix == ".pth")


def final_val_losses(run_dir: Path) -> dict[str, float]:
    """The last logged `val/<full|d..>/loss` of a training run (token cross-entropy on the held-out tokens)."""
    import csv

    out: dict[str, float] = {}
    for path in sorted(run_dir.glob("logs/csv*/metrics.csv")):
        for row in csv.DictReader(path.open()):
            for key, value in row.items():
                if key.startswith("val/") and key.endswith("/loss") and value:
                    out[key.split("/")[1]] = float(value)
    return out


# ------------------------------------------------------------------------------------------------ tables
def _f(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]], first: Sequence[str]) -> str:
    """Markdown table: the `first` columns, then FID, IS, class acc, GFLOPs, FLOPs speedup (and val loss if any)."""
    has_loss = any(r.get("val_loss") is not None for r in rows)
    head = list(first) + ["demo FID ↓", "demo IS ↑", "class acc ↑", "GFLOPs/img", "FLOPs speedup"] + \
        (["val token loss ↓"] if has_loss else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r[k]) for k in first] + [_f(r["fid"], ".2f"), _f(r["is"], ".2f"),
                                                f"{100 * r['class_acc']:.1f} %", _f(r["gflops"], ".4f"),
                                                _f(r.get("flops_speedup"), ".2f") + "x"]
        if has_loss:
            cells.append(_f(r.get("val_loss"), ".3f"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _speedups(rows: list[dict[str, Any]], full_gflops: float) -> None:
    for r in rows:
        r["flops_speedup"] = full_gflops / r["gflops"] if r["gflops"] else None


Points = list[tuple[float, float, str]]  # (x, y, label) of one line


def _plot(path: Path, title: str, panels: list[tuple[str, dict[str, Points]]], xlabel: str) -> Path:
    """One panel per metric (y label, {line name: points}), side by side, sharing the x axis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), dpi=110, squeeze=False)
    for ax, (ylabel, groups) in zip(axes[0], panels, strict=True):
        for name, pts in groups.items():
            pts = [p for p in pts if p[1] is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if len(pts) > 1 else "o", label=name)
            for x, y, label in pts:
                if label:
                    ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.margins(0.15)
    axes[0][0].legend(loc="best", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _panels(rows: list[dict[str, Any]], group_of: Callable[[dict[str, Any]], str],
            label_of: Callable[[dict[str, Any]], str], keys: Sequence[tuple[str, str]]) -> list[tuple[str, dict]]:
    """Plot panels (one per (row key, y label)) with one line per group, x = GFLOPs per image."""
    panels = []
    for key, ylabel in keys:
        groups: dict[str, Points] = {}
        for r in rows:
            y = r.get(key)
            groups.setdefault(group_of(r), []).append((r["gflops"], 100 * y if key == "class_acc" and y is not None
                                                       else y, label_of(r)))
        panels.append((ylabel, groups))
    return panels


FID_AXIS = ("fid", "demo FID (lower is better)")
ACC_AXIS = ("class_acc", "class accuracy of the samples, % (higher is better)")
LOSS_AXIS = ("val_loss", "held-out token cross-entropy (lower is better)")


# ------------------------------------------------------------------------------------------------ findings
def asymmetry(out: Path, setup: Setup, **_: Any) -> tuple[str, dict[str, Any]]:
    """Half depth at early / middle / late scales of the pre-trained VAR (no supernet training)."""
    from varianttrain.models.depth_plan import DepthPlan, ScalePlan, layer_subset

    log = setup.log
    ev, var = make_evaluator(setup)
    D, K = var.depth, len(var.patch_nums)
    half = layer_subset(D, D // 2, "nested", (D // 2, D // 4))
    # Early = every scale before the middle one, middle = the scale just below the last, late = the last scale:
    # with patch_nums 1, 2, 3, 4 that is {1x1, 2x2}, {3x3}, {4x4} (5, 9 and 16 of 30 tokens).
    zones = {"none (full model)": (), "early": tuple(range(K - 2)), "middle": (K - 2,), "late": (K - 1,),
             "all scales": tuple(range(K))}
    rows = []
    for zone, scales in zones.items():
        plan = DepthPlan(D, var.patch_nums, [ScalePlan(blocks=half) if k in scales else ScalePlan()
                                             for k in range(K)])
        log(f"[findings] asymmetry: half depth {list(half)} at {zone} {[var.patch_nums[k] for k in scales]}")
        res = ev(var, static(plan, zone))
        tokens = sum(var.patch_nums[k] ** 2 for k in scales)
        rows.append({"half depth at": zone, "scales": ", ".join(f"{var.patch_nums[k]}²" for k in scales) or "–",
                     "tokens": f"{tokens} / {var.L}", **res})
        log(f"[findings]   {json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()})}")
    log("[findings] asymmetry: the full model again with other seeds (the noise level of the metrics)")
    rows.append({"half depth at": "none, seeds + 1 (noise reference)", "scales": "–", "tokens": f"0 / {var.L}",
                 **ev.with_seed(ev.seed + 1)(var, static(DepthPlan.full(D, var.patch_nums), "full"))})
    _speedups(rows, rows[0]["gflops"])
    md = table(rows, ["half depth at", "scales", "tokens"])
    plot = _plot(out / "asymmetry.png", f"scale-depth asymmetry: depth-{D} demo VAR, blocks {list(half)} at one zone",
                 _panels(rows, lambda r: r["half depth at"], lambda r: "", [FID_AXIS, ACC_AXIS]), "GFLOPs per image")
    return md, {"rows": rows, "half_blocks": list(half), "plot": str(plot)}


def ratio(out: Path, setup: Setup, **_: Any) -> tuple[str, dict[str, Any]]:
    """Fixed subnet ratio p = 0.1 / 1.0 vs the progressive schedule, same steps; full and subnet quality."""
    from varianttrain.models.depth_plan import DepthPlan

    log = setup.log
    ev, pretrained = make_evaluator(setup)
    models: dict[str, tuple[Any, dict[str, Any], dict[str, float]]] = {"pre-trained (no fine-tune)": (
        pretrained, {"depth_choices": [pretrained.depth // 2, pretrained.depth // 4], "bridge_scales": 2,
                     "layer_subsets": None}, {})}
    for label, (run_name, config) in RATIO_CONFIGS.items():
        export = train_supernet(config, out, run_name, setup)
        var, meta = load_exported_var(export)
        models[label] = (var, meta, final_val_losses(export.parent.parent))
    ref_meta = models[next(iter(RATIO_CONFIGS))][1]
    rows = []
    D = pretrained.depth
    for label, (var, _meta, losses) in models.items():
        for d in [D] + list(ref_meta["depth_choices"]):
            plan = DepthPlan.full(D, var.patch_nums) if d == D else DepthPlan.subnet(
                D, var.patch_nums, ref_meta["bridge_scales"], tuple(ref_meta["layer_subsets"][str(d)]))
            log(f"[findings] ratio: {label}, {'full' if d == D else f'subnet d = {d}'}")
            res = ev(var, static(plan, f"d{d}"))
            rows.append({"training": label, "network": "full" if d == D else f"subnet d = {d}",
                         "val_loss": losses.get("full" if d == D else f"d{d}"), **res})
    _speedups(rows, rows[0]["gflops"])
    md = table(rows, ["training", "network"])
    panels = _panels(rows, lambda r: r["training"], lambda r: r["network"].replace("subnet ", ""),
                     [FID_AXIS, ACC_AXIS, LOSS_AXIS])
    plot = _plot(out / "ratio.png", "subnet ratio: fixed p vs progressive schedule (same number of steps)", panels,
                 "GFLOPs per image")
    return md, {"rows": rows, "plot": str(plot)}


def skipping(out: Path, setup: Setup, supernet: str | None = None, **_: Any) -> tuple[str, dict[str, Any]]:
    """VARiant subnet vs DepthVAR vs naive layer skipping vs early exit at equal FLOPs."""
    from varianttrain.methods.budget import DepthBudget
    from varianttrain.methods.registry import get_method
    from varianttrain.methods.spec import MethodOptions

    log = setup.log
    ev, pretrained = make_evaluator(setup)
    export = Path(supernet) if supernet else train_supernet(SUPERNET_CONFIG, out, "progressive", setup)
    var_sn, meta = load_exported_var(export)
    D = pretrained.depth
    subsets = {int(d): tuple(v) for d, v in meta["layer_subsets"].items()}
    rows = []
    log("[findings] skipping: full model (pre-trained)")
    rows.append({"budget": f"D = {D}", "method": "full model (pre-trained VAR)",
                 **ev(pretrained, get_method("full").build(pretrained, MethodOptions(
                     budget=DepthBudget(D, pretrained.patch_nums, D, bridge_scales=meta["bridge_scales"]))))})
    for d in meta["depth_choices"]:
        budget = DepthBudget(D, pretrained.patch_nums, d, bridge_scales=meta["bridge_scales"],
                             depth_choices=tuple(meta["depth_choices"]), layer_subsets=subsets)
        opts = MethodOptions(budget=budget)
        entries = [("VARiant subnet (supernet-trained)", var_sn, "variant"),
                   ("naive layer skipping (same subnet, no supernet training)", pretrained, "variant"),
                   ("DepthVAR (training-free)", pretrained, "depthvar"),
                   ("early exit (training-free)", pretrained, "earlyexit")]
        for label, var, name in entries:
            log(f"[findings] skipping: d = {d}: {label}")
            method = get_method(name).build(var, opts)
            rows.append({"budget": f"d = {d}", "method": label, **ev(var, method)})
    log("[findings] skipping: the full model again with other seeds (the noise level of the metrics)")
    rows.append({"budget": f"D = {D}", "method": "full model, seeds + 1 (noise reference)",
                 **ev.with_seed(ev.seed + 1)(pretrained, get_method("full").build(pretrained, MethodOptions(
                     budget=DepthBudget(D, pretrained.patch_nums, D, bridge_scales=meta["bridge_scales"]))))})
    _speedups(rows, rows[0]["gflops"])
    md = table(rows, ["budget", "method"])
    panels = _panels(rows[:-1], lambda r: r["method"].split(" (")[0], lambda r: r["budget"], [FID_AXIS, ACC_AXIS])
    plot = _plot(out / "skipping.png", f"equal FLOPs: VARiant vs DepthVAR vs naive skipping (depth-{D} demo VAR)",
                 panels, "GFLOPs per image")
    return md, {"rows": rows, "supernet": str(export), "plot": str(plot)}


RUNNERS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {"asymmetry": asymmetry, "ratio": ratio,
                                                                  "skipping": skipping}


def run_finding(name: str, setup: Setup | None = None, out_root: str | Path | None = None,
                **kwargs: Any) -> dict[str, Any]:
    """Run one finding in a fresh `<out_root>/findings/<name>/<NNN>` (default: the repository's runs/); returns its
    results (also in results.json)."""
    from varianttrain.training.runner import new_run_dir

    setup = setup or Setup()
    quick, log = setup.quick, setup.log
    out = new_run_dir(Path(out_root).resolve() if out_root else REPO_ROOT / "runs", f"findings/{name}")
    t0 = time.perf_counter()
    md, results = RUNNERS[name](out, setup, **kwargs)
    wall = time.perf_counter() - t0
    text = f"# Finding `{name}`{' (quick smoke mode)' if quick else ''}\n\nWall time {wall:.0f} s; {out}\n\n{md}\n"
    (out / "table.md").write_text(text)
    results.update(wall_s=wall, out_dir=str(out), quick=quick, table=md)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    log("\n" + text + f"\nplot: {results['plot']}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("finding", choices=FINDINGS)
    parser.add_argument("--quick", action="store_true", help="smoke mode: a few steps and samples")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-root", default=None, help="results go to <out-root>/findings/<finding>/<NNN>")
    parser.add_argument("--supernet", default=None, help="skipping: a supernet export to reuse instead of training one")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # process-wide: the entry point's decision (sized for 2 CPU cores)
    kwargs = {"supernet": args.supernet} if args.supernet else {}
    run_finding(args.finding, Setup(quick=args.quick), args.out_root, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
