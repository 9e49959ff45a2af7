"""The papers' findings in miniature, on the shipped demo models (each prints a Markdown table, its noise and a
plain verdict, and saves a plot).

    python -m varianttrain.demo.findings asymmetry [--quick]
    python -m varianttrain.demo.findings ratio [--quick] [--progressive EXPORT.pth --train-tokens DIR]
    python -m varianttrain.demo.findings methods [--quick] [--supernet EXPORT.pth]

* `asymmetry` (scale-depth asymmetry): the pre-trained demo VAR with half of its blocks (the nested subset I_{D/2})
  at the early scales only, the middle scales only, or the last scale only, versus quality and FLOPs. The VARiant
  paper's observation: the early scales need the full depth, the late ones (most of the tokens and FLOPs) do not.
  Early = the scales holding the first 20 % of the tokens (1-4 of 1, 2, 3, 4, 5, 6, 8; on VAR-d30 the paper's
  bridge, 1-6), late = the last scale, middle = the rest.
* `ratio` (fixed subnet ratio vs progressive schedule): the shipped VAR fine-tuned for the same number of steps on the
  same tokens with p = 0.1 fixed, p = 1.0 fixed and the 3-phase progressive schedule (three fine-tunes, ~35 min on 2
  cores); quality and held-out token loss of the full network and of every subnet. The shipped supernet is the
  progressive run on the models' own training tokens: `--progressive checkpoints/demo/supernet_d12.pth
  --train-tokens data/demo_train_tokens` reuses it (RECIPE.md makes those tokens) and trains the other two there.
* `methods` (equal FLOPs): at every depth budget of the supernet, the VARiant subnet (supernet-trained) vs the
  training-free methods on the pre-trained VAR: DepthVAR, StageVAR, FastVAR, CoDe (with the shipped refiner), early
  exit, and naive layer skipping (the VARiant plan on the pre-trained VAR). DepthVAR also runs with code blending
  off and with a flatter and a steeper sigmoid (its regime: the paper tunes these on 680-token maps), so a loss can
  be told apart from its setting.

Noise: the full model is sampled on three disjoint seed lists (seed splits); the spread (standard deviation) of its
demo FID and class accuracy over them is the noise of one row, and a difference counts only beyond twice that.
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

FINDINGS = ("asymmetry", "ratio", "methods")
NOISE_SEEDS = 3  # seed splits of the full model that give the noise of one row
EARLY_TOKEN_SHARE = 0.2  # asymmetry: "early" = the scales holding the first 20 % of the tokens
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
    train_tokens_dir: str | Path | None = None  # fine-tunes and held-out losses (default: tokens_dir)

    @property
    def fine_tune_tokens(self) -> Path:
        return Path(self.train_tokens_dir or self.tokens_dir)


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
    tokens = setup.fine_tune_tokens
    overrides = [f"run.root={run_root}", f"run.name={name}", f"data.train_path={tokens}/train",
                 f"data.val_path={tokens}/val", f"model.var_checkpoint={var_file(setup.ckpt_dir)}",
                 f"model.vqvae_checkpoint={setup.ckpt_dir}/vqvae.pth"]
    code = train_run(config, overrides + (QUICK_TRAIN if setup.quick else []), tasks=TASKS)
    if code != 0:
        raise RuntimeError(f"fine-tune {config} failed with exit status {code}")
    run_dir = sorted((run_root / name).iterdir())[-1]
    paths = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", run_dir / "export", formats=("pth",))
    return next(p for p in paths if p.suffix == ".pth")


@torch.inference_mode()
def held_out_losses(var: Any, meta: dict[str, Any], vqvae: Any, tokens_dir: Path, batch: int = 100
                    ) -> dict[int, float]:
    """Teacher-forced token cross-entropy on the held-out tokens `tokens_dir/val`, {depth: loss} for the full network
    (D) and every subnet of `meta` (the same figure as training's `val/<full|d..>/loss`, computed the same way for a
    run trained here and for a shipped export); `vqvae` turns the indices into the teacher-forcing input."""
    from varianttrain.data.datamodule import IndexDataset
    from varianttrain.losses import token_cross_entropy
    from varianttrain.models.depth_plan import DepthPlan

    data = IndexDataset(tokens_dir / "val", key="held-out demo tokens")
    D, pns = var.depth, var.patch_nums
    plans = {D: DepthPlan.full(D, pns)}
    for d, subset in (meta.get("layer_subsets") or {}).items():
        plans[int(d)] = DepthPlan.subnet(D, pns, meta["bridge_scales"], tuple(subset))
    sums = dict.fromkeys(plans, 0.0)
    count = 0
    for i in range(0, len(data), batch):
        idx_BL = torch.from_numpy(data.idx_NL[i:i + batch].astype("int64"))
        label_B = torch.from_numpy(data.labels_N[i:i + batch].astype("int64"))
        x_BLCv = vqvae.quantize.idxBl_to_var_input(list(idx_BL.split([p * p for p in pns], dim=1)))
        for d, plan in plans.items():
            sums[d] += float(token_cross_entropy(var(label_B, x_BLCv, plan), idx_BL).mean(1).sum())
        count += idx_BL.shape[0]
    return {d: total / count for d, total in sums.items()}


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


# ------------------------------------------------------------------------------------------------ noise, verdicts
@dataclass
class Noise:
    """The spread of one row's figures: the full model on `NOISE_SEEDS` disjoint seed lists."""

    fid: float
    class_acc: float
    rows: list[dict[str, Any]]

    def line(self) -> str:
        fids = ", ".join(f"{r['fid']:.2f}" for r in self.rows)
        accs = ", ".join(f"{100 * r['class_acc']:.1f}" for r in self.rows)
        return (f"Noise (the full model on {len(self.rows)} seed splits): demo FID {fids} -> s.d. {self.fid:.2f}; "
                f"class accuracy {accs} % -> s.d. {100 * self.class_acc:.1f} points. A difference counts beyond "
                f"twice the s.d. (FID {2 * self.fid:.2f}, accuracy {200 * self.class_acc:.1f} points).")


def seed_noise(ev: Evaluator, var: Any, first: dict[str, Any], log: Callable[[str], None]) -> Noise:
    """`first` is the full model's row on the evaluator's seeds; the other splits are sampled here."""
    import statistics

    rows = [first]
    for i in range(1, NOISE_SEEDS):
        log(f"[findings] noise: the full model on seed split {i + 1} of {NOISE_SEEDS}")
        rows.append(ev.with_seed(ev.seed + i * 1_000_003)(var, None))
    return Noise(statistics.stdev(r["fid"] for r in rows), statistics.stdev(r["class_acc"] for r in rows), rows)


def compare(a: dict[str, Any], b: dict[str, Any], noise: Noise) -> str:
    """'better' / 'worse' / 'within noise': row `a` against row `b` on demo FID (lower is better), beyond 2 s.d."""
    diff = b["fid"] - a["fid"]
    if abs(diff) <= 2 * noise.fid:
        return "within noise"
    return "better" if diff > 0 else "worse"


def _fid_gap(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"FID {a['fid']:.2f} vs {b['fid']:.2f}, accuracy {100 * a['class_acc']:.1f} vs {100 * b['class_acc']:.1f} %"


# ------------------------------------------------------------------------------------------------ findings
def asymmetry_zones(patch_nums: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Early = the scales holding the first `EARLY_TOKEN_SHARE` of the tokens, late = the last scale, middle = the
    scales in between (patch_nums 1, 2, 3, 4, 5, 6, 8: {1-4}, {5, 6}, {8}; VAR-d30's: {1-6}, {8, 10, 13}, {16})."""
    K, total = len(patch_nums), sum(p * p for p in patch_nums)
    early, seen = [], 0
    for k, pn in enumerate(patch_nums[:-2]):
        seen += pn * pn
        if seen > EARLY_TOKEN_SHARE * total:
            break
        early.append(k)
    early = early or [0]
    return {"early": tuple(early), "middle": tuple(range(early[-1] + 1, K - 1)), "late": (K - 1,)}


def asymmetry(out: Path, setup: Setup, **_: Any) -> tuple[str, dict[str, Any]]:
    """Half depth at early / middle / late scales of the pre-trained VAR (no supernet training)."""
    from varianttrain.models.depth_plan import DepthPlan, ScalePlan, layer_subset

    log = setup.log
    ev, var = make_evaluator(setup)
    D, K = var.depth, len(var.patch_nums)
    half = layer_subset(D, D // 2, "nested", (D // 2, D // 4))
    zones = {"none (full model)": (), **asymmetry_zones(var.patch_nums), "all scales": tuple(range(K))}
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
    noise = seed_noise(ev, var, rows[0], log)
    _speedups(rows, rows[0]["gflops"])
    by = {r["half depth at"]: r for r in rows}
    full, early, late = by["none (full model)"], by["early"], by["late"]
    loss_early, loss_late = early["fid"] - full["fid"], late["fid"] - full["fid"]
    gap = loss_early - loss_late
    if gap > 2 * noise.fid:
        verdict = (f"**Reproduces.** Half depth costs {loss_early:+.2f} FID at the early scales and {loss_late:+.2f} "
                   f"at the last one, which holds {late['tokens']} tokens (a gap of {gap:.2f} > {2 * noise.fid:.2f}, "
                   "twice the noise): the early scales need the full depth, the late ones much less.")
    elif gap < -2 * noise.fid:
        verdict = (f"**Reversed.** Half depth costs more at the last scale ({loss_late:+.2f} FID) than at the early "
                   f"ones ({loss_early:+.2f}), beyond twice the noise ({2 * noise.fid:.2f}).")
    else:
        verdict = (f"**Does not reproduce (within noise).** Early {loss_early:+.2f} FID, last scale {loss_late:+.2f}; "
                   f"the gap {gap:.2f} is within twice the noise ({2 * noise.fid:.2f}).")
    verdict += " " + per_flop_sentence(full, {z: by[z] for z in ("early", "middle", "late")}, noise)
    md = "\n".join([table(rows, ["half depth at", "scales", "tokens"]), "", noise.line(), "", verdict])
    plot = _plot(out / "asymmetry.png", f"scale-depth asymmetry: depth-{D} demo VAR, blocks {list(half)} at one zone",
                 _panels(rows, lambda r: r["half depth at"], lambda r: "", [FID_AXIS, ACC_AXIS]), "GFLOPs per image")
    return md, {"rows": rows, "half_blocks": list(half), "plot": str(plot), "noise": dataclasses.asdict(noise),
                "verdict": verdict, "reproduces": gap > 2 * noise.fid}


def per_flop_sentence(full: dict[str, Any], zones: dict[str, dict[str, Any]], noise: Noise) -> str:
    """FID lost per GFLOP saved at each zone, with its noise band (2 s.d. of FID over the GFLOPs saved): the zones
    save different amounts of compute, and the paper's argument is about where depth buys the most quality."""
    saved = {z: full["gflops"] - r["gflops"] for z, r in zones.items()}
    rate = {z: ((r["fid"] - full["fid"]) / saved[z], 2 * noise.fid / saved[z]) for z, r in zones.items()}
    parts = ", ".join(f"{z} {v:.1f} ± {band:.1f}" for z, (v, band) in rate.items())
    (e, eb), (late, lb) = rate["early"], rate["late"]
    if e - late > eb + lb:
        said = "the early scales lose the most per FLOP saved, beyond the noise, as the paper says"
    elif late - e > eb + lb:
        said = "the last scale loses more per FLOP saved than the early ones, beyond the noise"
    else:
        said = "early and last scale are within noise of each other"
    cheapest = min(rate, key=lambda z: rate[z][0])
    return (f"Per GFLOP saved (demo FID lost / GFLOPs saved per image, ± twice the noise): {parts}; {said}; the "
            f"{cheapest} zone is where depth is cheapest to cut.")


def ratio(out: Path, setup: Setup, progressive: str | None = None, **_: Any) -> tuple[str, dict[str, Any]]:
    """Fixed subnet ratio p = 0.1 / 1.0 vs the progressive schedule, same steps; full and subnet quality."""
    from varianttrain.models.depth_plan import DepthPlan

    log = setup.log
    ev, pretrained = make_evaluator(setup)

    def losses_of(var: Any, meta: dict[str, Any]) -> dict[int, float]:
        return held_out_losses(var, meta, ev.vqvae, setup.fine_tune_tokens)

    models: dict[str, tuple[Any, dict[str, Any], dict[str, float]]] = {"pre-trained (no fine-tune)": (
        pretrained, {"depth_choices": [pretrained.depth // 2, pretrained.depth // 4], "bridge_scales": 2,
                     "layer_subsets": None}, {})}
    for label, (run_name, config) in RATIO_CONFIGS.items():
        if run_name == "progressive" and progressive:
            log(f"[findings] ratio: {label} = {progressive} (given; it must come from the same recipe, steps and "
                f"tokens, {setup.fine_tune_tokens}, as the fixed-ratio runs trained here)")
            var, meta = load_exported_var(progressive)
            models[label] = (var, meta, losses_of(var, meta))
            continue
        export = train_supernet(config, out, run_name, setup)
        var, meta = load_exported_var(export)
        models[label] = (var, meta, losses_of(var, meta))
    ref_meta = models[next(iter(RATIO_CONFIGS))][1]
    first = next(iter(models))  # the pre-trained VAR: its losses under the same subnet plans (naive skipping)
    models[first] = (pretrained, models[first][1], losses_of(pretrained, ref_meta))
    rows = []
    D = pretrained.depth
    for label, (var, _meta, losses) in models.items():
        for d in [D] + list(ref_meta["depth_choices"]):
            plan = DepthPlan.full(D, var.patch_nums) if d == D else DepthPlan.subnet(
                D, var.patch_nums, ref_meta["bridge_scales"], tuple(ref_meta["layer_subsets"][str(d)]))
            log(f"[findings] ratio: {label}, {'full' if d == D else f'subnet d = {d}'}")
            res = ev(var, static(plan, f"d{d}"))
            rows.append({"training": label, "network": "full" if d == D else f"subnet d = {d}",
                         "val_loss": losses.get(d), **res})
    noise = seed_noise(ev, pretrained, rows[0], log)
    _speedups(rows, rows[0]["gflops"])
    by = {(r["training"], r["network"]): r for r in rows}
    prog, p01, p10 = "progressive (3-phase)", "p = 0.1 fixed", "p = 1.0 fixed"
    smallest = f"subnet d = {min(ref_meta['depth_choices'])}"
    checks = [("its full network", by[(prog, "full")], by[(p10, "full")], p10),
              (f"its smallest subnet ({smallest[7:]})", by[(prog, smallest)], by[(p01, smallest)], p01)]
    said = [f"progressive vs {other}, {what}: {compare(a, b, noise)} ({_fid_gap(a, b)})"
            for what, a, b, other in checks]
    ok = all(compare(a, b, noise) != "worse" for _, a, b, _ in checks)
    strict = all(compare(a, b, noise) == "better" for _, a, b, _ in checks)
    verdict = ("**Reproduces.** " if strict else "**Partly reproduces (not worse, within noise somewhere).** " if ok
               else "**Does not reproduce.** ")
    verdict += ("The paper: p = 0.1 keeps the full network but leaves the subnets weak, p = 1.0 the reverse, the "
                "progressive schedule gets both. Here: " + "; ".join(said) + ".")
    md = "\n".join([table(rows, ["training", "network"]), "", noise.line(), "", verdict])
    panels = _panels(rows, lambda r: r["training"], lambda r: r["network"].replace("subnet ", ""),
                     [FID_AXIS, ACC_AXIS, LOSS_AXIS])
    plot = _plot(out / "ratio.png", "subnet ratio: fixed p vs progressive schedule (same number of steps)", panels,
                 "GFLOPs per image")
    return md, {"rows": rows, "plot": str(plot), "noise": dataclasses.asdict(noise), "verdict": verdict,
                "reproduces": strict}


# DepthVAR's sensitivity rows: (label, knobs); the default is blending on, sigmoid k = 12 (DepthVARConfig).
DEPTHVAR_SETTINGS = (("DepthVAR, code blending off", {"blending": False}),
                     ("DepthVAR, sigmoid k = 4 (flatter)", {"sigmoid_k": 4.0}),
                     ("DepthVAR, sigmoid k = 36 (steeper)", {"sigmoid_k": 36.0}))
TRAINING_FREE = (("DepthVAR (training-free)", "depthvar"), ("StageVAR (training-free)", "stagevar"),
                 ("FastVAR (training-free)", "fastvar"), ("CoDe (training-free, shipped refiner)", "code"),
                 ("early exit (training-free)", "earlyexit"),
                 ("naive layer skipping (VARiant plan, no supernet training)", "variant"))


def methods(out: Path, setup: Setup, supernet: str | None = None, **_: Any) -> tuple[str, dict[str, Any]]:
    """VARiant subnet vs every training-free method on the pre-trained VAR, at the FLOPs of each depth budget."""
    from varianttrain.checkpoints import load_exported_var as load
    from varianttrain.demo.artifacts import supernet_file
    from varianttrain.methods.budget import DepthBudget
    from varianttrain.methods.registry import get_method
    from varianttrain.methods.spec import MethodOptions

    log = setup.log
    ev, pretrained = make_evaluator(setup)
    export = Path(supernet) if supernet else supernet_file(setup.ckpt_dir)
    var_sn, meta = load(export)
    refiners = sorted(Path(setup.ckpt_dir).glob("refiner_d*.pth"))
    refiner = load(refiners[0])[0] if refiners else None
    D = pretrained.depth
    subsets = {int(d): tuple(v) for d, v in meta["layer_subsets"].items()}
    log("[findings] methods: full model (pre-trained)")
    rows = [{"budget": f"D = {D}", "method": "full model (pre-trained VAR)", "flop_ratio": 1.0, **ev(pretrained, None)}]
    depths = [min(meta["depth_choices"])] if setup.quick else list(meta["depth_choices"])  # smoke: one budget
    for d in depths:
        budget = DepthBudget(D, pretrained.patch_nums, d, bridge_scales=meta["bridge_scales"],
                             depth_choices=tuple(meta["depth_choices"]), layer_subsets=subsets)
        entries = [("VARiant subnet (supernet-trained)", var_sn, "variant", {})]
        entries += [(label, pretrained, name, {}) for label, name in TRAINING_FREE if name != "code" or refiner]
        entries += [(label, pretrained, "depthvar", knobs) for label, knobs in DEPTHVAR_SETTINGS]
        for label, var, name, knobs in entries:
            log(f"[findings] methods: d = {d}: {label}")
            method = get_method(name).build(var, MethodOptions(budget=budget, knobs=knobs, refiner=refiner))
            rows.append({"budget": f"d = {d}", "method": label, "flop_ratio": method.budget_match.flop_ratio,
                         **ev(var, method)})
    noise = seed_noise(ev, pretrained, rows[0], log)
    _speedups(rows, rows[0]["gflops"])
    said, lost = [], []
    for d in depths:  # VARiant against every method of its budget (the DepthVAR settings are sensitivity rows)
        at = {r["method"]: r for r in rows if r["budget"] == f"d = {d}"}
        ours = at["VARiant subnet (supernet-trained)"]
        verdicts = {label: compare(ours, r, noise) for label, r in at.items()
                    if r is not ours and not label.startswith("DepthVAR,")}
        lost += [label for label, v in verdicts.items() if v == "worse"]
        said.append(f"d = {d}: VARiant vs " + ", ".join(f"{label.split(' (')[0]}: {v}"
                                                        for label, v in verdicts.items()))
    verdict = ("**Reproduces.** " if not lost else "**Does not fully reproduce.** ") + (
        "The paper: at equal FLOPs the supernet-trained subnet beats the training-free methods on the released "
        "model. Here (better / worse = VARiant's demo FID beyond twice the noise): " + "; ".join(said) + "."
        + ("" if refiner else " CoDe left out: no refiner_d*.pth is shipped."))
    md = "\n".join([table(rows, ["budget", "method"]), "", "FLOPs / budget of every row: " + ", ".join(
        f"{r['method'].split(' (')[0]} {r['budget']}: {r['flop_ratio']:.2f}" for r in rows[1:]
        if not r["method"].startswith("DepthVAR,")), "", noise.line(), "", verdict])
    panels = _panels([r for r in rows if not r["method"].startswith("DepthVAR,")],
                     lambda r: r["method"].split(" (")[0], lambda r: r["budget"], [FID_AXIS, ACC_AXIS])
    plot = _plot(out / "methods.png", f"equal FLOPs: VARiant vs the training-free methods (depth-{D} demo VAR)",
                 panels, "GFLOPs per image")
    return md, {"rows": rows, "supernet": str(export), "plot": str(plot), "noise": dataclasses.asdict(noise),
                "verdict": verdict, "reproduces": not lost}


RUNNERS: dict[str, Callable[..., tuple[str, dict[str, Any]]]] = {"asymmetry": asymmetry, "ratio": ratio,
                                                                  "methods": methods}


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
    parser.add_argument("--supernet", default=None,
                        help="methods: the supernet export to evaluate (default: the shipped one)")
    parser.add_argument("--progressive", default=None,
                        help="ratio: the progressive-schedule export to compare (default: the shipped supernet; "
                             "the fixed-ratio runs are trained)")
    parser.add_argument("--train-tokens", default=None,
                        help="ratio: the token set to fine-tune on and to score the held-out loss with (default: "
                             "the demo's data/demo_tokens)")
    args = parser.parse_args(argv)
    if args.progressive and not args.train_tokens:
        parser.error("--progressive needs --train-tokens: the tokens that run was trained on (the fixed-ratio runs "
                     "must see the same data; the shipped supernet's are data/demo_train_tokens, RECIPE.md)")
    torch.set_num_threads(args.threads)  # process-wide: the entry point's decision (sized for 2 CPU cores)
    kwargs = {k: v for k, v in (("supernet", args.supernet), ("progressive", args.progressive)) if v}
    run_finding(args.finding, Setup(quick=args.quick, train_tokens_dir=args.train_tokens), args.out_root, **kwargs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
