"""The evaluation runner behind `eval.py`: sample every method on the same (class, index, seed) work list, compute
FID / IS, measure cost, and write the report.

Order of work (errors about missing inputs come first, before hours of sampling):
1. distributed setup (torchrun env), models, methods, Inception weights and reference statistics are loaded;
2. per method: PNGs + ADM npz (`generation`), metrics over the PNGs on disk (so resumed runs count every image),
   cost at each batch size (`cost`, rank 0 only; other ranks wait);
3. `full` is also timed when it was not requested (`cost.reference_full`), so every row has a speedup;
4. rank 0 writes ``report.json`` / ``report.md`` / ``pareto.png`` (`report`) and ``<method>/result.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from varianttrain.checkpoints import CheckpointError, load_demo_extractor, load_var, load_var_with_metadata, load_vqvae
from varianttrain.config_io import apply_overrides, from_dict, load_config, to_dict
from varianttrain.evaluation.config import EvalConfig
from varianttrain.evaluation.cost import measure_cost
from varianttrain.evaluation.generation import barrier, dist_rank_world, generate_samples
from varianttrain.evaluation.images import load_image
from varianttrain.evaluation.report import PUBLISHED, write_report
from varianttrain.evaluation.seeds import class_list, sample_name, work_list
from varianttrain.methods.budget import DEFAULT_BRIDGE_SCALES, DepthBudget
from varianttrain.methods.registry import build_method, check_method_options, resolve_methods
from varianttrain.methods.spec import MethodOptions
from varianttrain.models.var import VAR
from varianttrain.models.vqvae import VQVAE
from varianttrain.sampling.sampler import SamplingMethod, StaticPlanMethod


class EvalInputError(RuntimeError):
    """A required input (file or config key) is missing or inconsistent; the message says how to fix it."""


# ------------------------------------------------------------------------------------------------------ set-up
def build_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalConfig:
    """`EvalConfig` from a YAML file (or the defaults when `path` is None) plus ``key=value`` overrides."""
    if path is not None:
        return load_config(EvalConfig, path, overrides)
    return from_dict(EvalConfig, apply_overrides({}, overrides), where="command line")


def init_distributed(device_setting: str) -> tuple[torch.device, bool]:
    """Join the process group torchrun describes (WORLD_SIZE > 1) and pick this rank's device.

    Returns (device, whether this call created the group, so `run` destroys it again).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting == "auto":
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    else:
        device = torch.device(device_setting)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
    return device, created


def _require_file(path: Path | None, key: str, flag: str, what: str) -> Path:
    if path is None:
        raise EvalInputError(f"no {what} given: set {key} in the config or pass {flag}")
    if not Path(path).is_file():
        raise EvalInputError(f"{what} {path} not found (config key {key}, flag {flag}); see docs/EVALUATION.md")
    return Path(path)


def build_budget(cfg: EvalConfig, var: VAR, meta: dict[str, Any]) -> DepthBudget:
    """The run's `DepthBudget`: config first, then export metadata, then defaults (N = 6, full depth)."""
    b = cfg.budget
    bridge = b.bridge_scales
    if bridge is None:
        bridge = meta.get("bridge_scales", meta.get("bridge_n", DEFAULT_BRIDGE_SCALES))
    bridge = min(int(bridge), len(var.patch_nums))  # a tiny test pyramid may have fewer than N scales
    subsets_raw = meta.get("layer_subsets") or {}
    subsets = {int(d): tuple(int(x) for x in blocks) for d, blocks in subsets_raw.items()}
    choices = tuple(int(d) for d in meta.get("depth_choices", b.depth_choices))
    return DepthBudget(total_depth=var.depth, patch_nums=var.patch_nums, depth=b.depth or var.depth,
                       bridge_scales=bridge, subset_rule=meta.get("subset_rule", b.subset_rule),
                       depth_choices=tuple(c for c in choices if c < var.depth), layer_subsets=subsets,
                       reference_scale=b.reference_scale)


def load_extractor(cfg: EvalConfig, device: torch.device) -> Callable:
    """Inception (torch-fidelity, from the weights file) or the demo classifier, on `device`."""
    m = cfg.metrics
    if m.extractor == "inception":
        from varianttrain.evaluation.metrics import load_inception

        return load_inception(m.inception_weights, device)  # raises naming the file and where to put it
    path = _require_file(m.demo_classifier, "metrics.demo_classifier", "--set metrics.demo_classifier=PATH",
                         "demo classifier checkpoint")
    try:
        return load_demo_extractor(path).to(device).eval()
    except CheckpointError as err:
        raise EvalInputError(f"metrics.demo_classifier: {err}") from err


def _load_second_var(path: str, patch_nums: Sequence[int], device: torch.device) -> VAR:
    """The methods' `model_loader`: a file that does not fit is an input error (eval.py reports it)."""
    try:
        return load_var(Path(path), patch_nums, device)
    except CheckpointError as err:
        raise EvalInputError(str(err)) from err


def _uint8_batches(paths: Sequence[Path], batch: int, image_size: int | None = None):
    for i in range(0, len(paths), batch):
        yield torch.stack([load_image(p, image_size) for p in paths[i:i + batch]])


def load_reference(cfg: EvalConfig, extractor: Callable, device: torch.device, image_size: int):
    """(reference statistics, reference features for precision/recall or None)."""
    from varianttrain.evaluation.images import list_images
    from varianttrain.evaluation.metrics import load_reference_stats, reference_stats_from_folder

    m = cfg.metrics
    ref_feats = None
    if m.ref_stats is not None:
        ref = load_reference_stats(m.ref_stats)  # raises naming the file, the ADM batch and where to put it
        if m.precision_recall:
            with np.load(m.ref_stats) as npz:
                if "arr_0" not in npz.files:
                    raise EvalInputError(f"metrics.precision_recall needs reference images: {m.ref_stats} has no "
                                         "arr_0 (use the full VIRTUAL_imagenet256_labeled.npz or metrics.ref_folder)")
                arr = npz["arr_0"]
            ref_feats = _features(extractor, (torch.from_numpy(arr[i:i + m.feature_batch_size]).permute(0, 3, 1, 2)
                                              for i in range(0, len(arr), m.feature_batch_size)), device)
        return ref, ref_feats
    if m.ref_folder is None:
        raise EvalInputError("FID needs reference statistics: pass --ref-stats VIRTUAL_imagenet256_labeled.npz "
                             "(config key metrics.ref_stats) or metrics.ref_folder=<folder of real images>; "
                             "see docs/EVALUATION.md. Use --no-fid to skip metrics.")
    ref = reference_stats_from_folder(m.ref_folder, extractor, batch_size=m.feature_batch_size, device=device,
                                      image_size=image_size)
    if m.precision_recall:
        paths = list_images(m.ref_folder)
        ref_feats = _features(extractor, _uint8_batches(paths, m.feature_batch_size, image_size), device)
    return ref, ref_feats


@torch.inference_mode()
def _features(extractor: Callable, batches, device: torch.device) -> torch.Tensor:
    # Same extraction path as the samples' features (no TF32), so both sides of precision/recall are alike.
    from varianttrain.evaluation.metrics import extract_pool_features

    return extract_pool_features(extractor, batches, device)


def compute_metrics(cfg: EvalConfig, extractor: Callable, sample_dir: Path, items, ref, ref_feats,
                    device: torch.device) -> dict[str, float] | None:
    """FID / IS (/ P-R) of the PNGs on disk; collective. Ranks take every world-th image; dict on rank 0."""
    from varianttrain.evaluation.metrics import MetricsAccumulator

    rank, world = dist_rank_world()
    mine = list(items)[rank::world]
    acc = MetricsAccumulator(extractor, device=device, keep_logits=True, keep_features=ref_feats is not None,
                             batch_size=cfg.metrics.feature_batch_size)
    step = cfg.metrics.feature_batch_size
    for i in range(0, len(mine), step):
        chunk = mine[i:i + step]
        images = torch.stack([load_image(sample_dir / sample_name(it.label, it.index)) for it in chunk])
        acc.update(images, torch.tensor([it.global_index for it in chunk]))
    return acc.compute(ref=ref, ref_features_NF=ref_feats, is_splits=min(cfg.metrics.is_splits, len(items)))


# ------------------------------------------------------------------------------------------------------- helpers
def describe_method(method: SamplingMethod) -> str:
    if isinstance(method, StaticPlanMethod):
        return method.plan.describe()
    describe = getattr(method, "describe", None)
    return describe() if callable(describe) else type(method).__name__


def protocol_header(cfg: EvalConfig, sampling, budget: DepthBudget, var: VAR, n_items: int, world: int,
                    device: torch.device, vqvae_path: Path, vqvae: VQVAE) -> dict[str, Any]:
    """Everything that defines the numbers (printed in every results file, docs/REFERENCES.md E2)."""
    g, m = cfg.generation, cfg.metrics
    return {
        "sampling_protocol": cfg.sampling.protocol,
        "sampling": dataclasses.asdict(sampling),
        "cfg_schedule": "guidance t = cfg * k / (K - 1) on logits: (1 + t) cond - t uncond",
        "rejection_sampling": "none",
        "budget": budget.describe(),
        "model": f"{var.config.describe()} from {cfg.model.var}" + (" (EMA)" if cfg.model.ema else ""),
        "vqvae": str(vqvae_path),
        "samples": f"{n_items} = {g.samples_per_class} per class x {n_items // g.samples_per_class} classes",
        "seeds": f"per image, rule '{g.seed_rule}', base seed {g.seed} (varianttrain.evaluation.seeds)",
        "batch_size": g.batch_size,
        "image_quantisation": g.rounding,
        "image_size": vqvae.config.image_size,
        "metrics": ("off" if not m.enabled or cfg.cost_only else
                    f"{m.extractor} ({m.inception_weights if m.extractor == 'inception' else m.demo_classifier}), "
                    f"reference {m.ref_stats or m.ref_folder}, feature batch {m.feature_batch_size}, "
                    f"IS splits {m.is_splits}"),
        "cost": (f"batch sizes {list(cfg.cost.batch_sizes)}, warm-up {cfg.cost.warmup}, repeats {cfg.cost.repeats}, "
                 "median" if cfg.cost.enabled else "off"),
        "device": f"{device} x {world} rank(s)" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                                   else " (float32: autocast_dtype applies on GPU only)"),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _published(cfg: EvalConfig, var: VAR, budget: DepthBudget, methods: Sequence[str]) -> list[str]:
    if var.depth != 30:  # the anchors are VAR-d30 numbers
        return []
    keys = set(methods) | {f"variant@{budget.depth}"} if "variant" in methods else set(methods)
    return [text for key, text in PUBLISHED.get(cfg.sampling.protocol, []) if key in keys]


def _log(msg: str) -> None:
    if dist_rank_world()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------- run
def run(cfg: EvalConfig, log: Callable[[str], None] = _log) -> dict[str, Any] | None:
    """Run the evaluation `cfg` describes. Returns the report on rank 0 (None on other ranks)."""
    device, created_group = init_distributed(cfg.model.device)
    try:
        return _run(cfg, device, log)
    finally:
        if created_group:
            dist.destroy_process_group()


def _run(cfg: EvalConfig, device: torch.device, log: Callable[[str], None]) -> dict[str, Any] | None:
    rank, world = dist_rank_world()
    try:  # knobs a method would refuse fail here, before any weights are read
        check_method_options(cfg.method_options)
    except ValueError as err:
        raise EvalInputError(str(err)) from err
    var_path = _require_file(cfg.model.var, "model.var", "--var", "VAR checkpoint")
    names = resolve_methods(cfg.methods)
    try:
        var, meta = load_var_with_metadata(var_path, cfg.model.patch_nums, device, ema=cfg.model.ema)
        # An export names the VQVAE it was trained with; the config still wins.
        vqvae_setting = cfg.model.vqvae or (Path(meta["vqvae_checkpoint"]) if meta.get("vqvae_checkpoint") else None)
        vqvae_path = _require_file(vqvae_setting, "model.vqvae", "--vqvae", "VQVAE checkpoint")
        vqvae = load_vqvae(vqvae_path, var.patch_nums, cfg.model.vqvae_ch, device)
    except CheckpointError as err:
        raise EvalInputError(str(err)) from err
    try:
        budget = build_budget(cfg, var, meta)
    except ValueError as err:  # depth outside 1..D, bridge beyond the pyramid, bad export subsets
        raise EvalInputError(f"budget: {err}") from err
    sampling = cfg.sampling.build()
    g = cfg.generation
    classes = class_list(g.num_classes or var.num_classes, g.classes)
    if classes and (min(classes) < 0 or max(classes) >= var.num_classes):
        raise EvalInputError(f"generation classes {classes[:5]}... outside 0..{var.num_classes - 1} of the model")
    items = work_list(classes, g.samples_per_class, g.seed, g.seed_rule)
    image_size = vqvae.config.image_size
    out_dir = Path(cfg.out_dir)

    def options_for(name: str) -> MethodOptions:
        return MethodOptions(budget=budget, knobs=dict(cfg.method_options.get(name, {})))

    timed = list(names)
    if cfg.cost.enabled and cfg.cost.reference_full and "full" not in timed:
        timed.append("full")
    methods: dict[str, SamplingMethod] = {}
    for name in timed:  # all of them before any sampling: a knob this model cannot run fails now, not hours later
        try:
            methods[name] = build_method(name, var, options_for(name))
        except ValueError as err:  # e.g. a block or scale index the model does not have
            raise EvalInputError(f"method {name}: {err}") from err

    do_metrics = cfg.metrics.enabled and not cfg.cost_only
    extractor = ref = ref_feats = None
    if do_metrics:  # before any sampling: a missing weights or statistics file must fail in seconds, not hours
        extractor = load_extractor(cfg, device)
        ref, ref_feats = load_reference(cfg, extractor, device, image_size)

    header = protocol_header(cfg, sampling, budget, var, len(items), world, device, vqvae_path, vqvae)
    log(f"[eval] {len(names)} method(s) {names} | {header['budget']} | {header['samples']} | {world} rank(s)")
    rows: list[dict[str, Any]] = []
    for name, method in methods.items():
        reference_only = name not in names
        match = method.budget_match
        row: dict[str, Any] = {"method": name, "status": "reference, cost only" if reference_only else "ok",
                               "plan": describe_method(method), "knobs": dict(cfg.method_options.get(name, {})),
                               "flops_closed_form_per_image": match.flops.total,
                               "budget_flops_per_image": match.target_flops, "flop_ratio": match.flop_ratio,
                               "budget_note": match.note}
        method_dir = out_dir / name
        if not reference_only and not cfg.cost_only:
            manifest = {"method": name, "method_knobs": row["knobs"], "budget": budget.describe(),
                        "sampling": dataclasses.asdict(sampling), "seed": g.seed, "seed_rule": g.seed_rule,
                        "rounding": g.rounding, "var_checkpoint": str(var_path), "image_size": image_size,
                        "batch_size": g.batch_size, "plan": row["plan"]}
            log(f"[eval] {name}: sampling {len(items)} images into {method_dir / 'samples'}")
            gen = generate_samples(var, vqvae, method, sampling, items, g.batch_size, method_dir, manifest,
                                   rounding=g.rounding, device=device, save_npz=g.save_npz, log=log)
            row.update(num_samples=len(items), samples_dir=str(gen.sample_dir), npz=str(gen.npz) if gen.npz else None,
                       flops_per_image=gen.flops_per_image, kv_cache_bytes_per_image=gen.kv_cache_bytes_per_image,
                       written_by_rank0=gen.written, skipped_by_rank0=gen.skipped)
            if do_metrics:
                log(f"[eval] {name}: metrics over {len(items)} PNGs")
                metrics = compute_metrics(cfg, extractor, gen.sample_dir, items, ref, ref_feats, device)
                if metrics is not None:
                    row.update(metrics)
        if cfg.cost.enabled and rank == 0:
            log(f"[eval] {name}: timing at batch sizes {list(cfg.cost.batch_sizes)}")
            costs = measure_cost(var, vqvae, method, sampling, cfg.cost.batch_sizes, cfg.cost.warmup,
                                 cfg.cost.repeats, device, seed=g.seed)
            row["cost"] = [c.to_dict() for c in costs]
            if row.get("flops_per_image") is None and costs:
                row["flops_per_image"] = costs[-1].flops_per_image
        barrier()  # other ranks wait while rank 0 times
        if rank == 0:
            method_dir.mkdir(parents=True, exist_ok=True)
            (method_dir / "result.json").write_text(json.dumps(row, indent=2, default=str) + "\n")
        rows.append(row)
    if rank != 0:
        return None
    report = {"title": f"{', '.join(names)} at {budget.describe()}", "protocol": header, "methods": rows,
              "published": _published(cfg, var, budget, names), "config": to_dict(cfg)}
    paths = write_report(report, out_dir, overwrite=cfg.overwrite)
    report["files"] = {"json": str(paths.json), "markdown": str(paths.markdown), "plot": str(paths.plot)}
    log(f"[eval] report: {paths.markdown}, {paths.json}, {paths.plot}")
    return report
