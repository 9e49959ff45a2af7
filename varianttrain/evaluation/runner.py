"""The evaluation runner behind `eval.py`: every row samples the same (class, index, seed) work list; FID / IS with
their noise, fidelity to the full model, cost, a side-by-side grid, and the report.

Order of work (a missing or inconsistent input fails first, in seconds, before hours of sampling):
1. pre-flight (`preflight`): every input checked, every problem reported at once, no model built yet;
2. fingerprints: SHA-256 of every weight file (rank 0, cached), which name each row's weights in the report and tie
   each sample folder to the weights that made it;
3. models built without random init and loaded from memory-mapped files; every method built (a knob the model
   cannot run fails now); every row's sample folder checked against its manifest;
4. extractor and reference statistics loaded;
5. per row (`rows`): PNGs + ADM npz (`generation`), metrics over the PNGs on disk, cost (`cost`, rank 0);
6. noise (`uncertainty`: paired bootstrap over images), per-image fidelity to the full model (`fidelity`), the
   random-number check (every row draws exactly as the full model does), the grid (`grid`);
7. rank 0 writes ``report.json`` / ``report.md`` / ``pareto.png`` / ``grid.png`` and ``<row>/result.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from varianttrain.checkpoints import CheckpointError, load_demo_extractor, load_vqvae
from varianttrain.config_io import apply_overrides, from_dict, load_config, to_dict
from varianttrain.evaluation.config import EvalConfig
from varianttrain.evaluation.cost import TimedMethod, measure_costs
from varianttrain.evaluation.generation import (
    ManifestMismatch,
    barrier,
    check_manifest,
    dist_rank_world,
    generate_samples,
)
from varianttrain.evaluation.images import UnreadableImage, load_image
from varianttrain.evaluation.inputs import EvalInputError
from varianttrain.evaluation.preflight import Preflight, preflight
from varianttrain.evaluation.provenance import software
from varianttrain.evaluation.report import PUBLISHED, report_paths, write_report
from varianttrain.evaluation.rows import Row
from varianttrain.evaluation.seeds import WorkItem, sample_name
from varianttrain.evaluation.uncertainty import (
    Z_SIGNIFICANT,
    PerImage,
    bootstrap_indices,
    resample_row,
    row_differences,
    row_noise,
)
from varianttrain.evaluation.weights import Fingerprints, build_var
from varianttrain.methods.registry import build_method
from varianttrain.methods.spec import MethodOptions
from varianttrain.models.var import VAR
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, StaticPlanMethod, generate

__all__ = ["EvalInputError", "ManifestMismatch", "build_config", "run"]

FINGERPRINT_CACHE = ".sha256-cache.json"  # in the output root: hashes of weight files, by path, size and mtime


# ------------------------------------------------------------------------------------------------------ set-up
def build_config(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalConfig:
    """`EvalConfig` from a YAML file (or the class defaults when `path` is None) plus ``key=value`` overrides."""
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


def _log(msg: str) -> None:
    if dist_rank_world()[0] == 0:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ models
def weight_fingerprints(pre: Preflight, cfg: EvalConfig, log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """{role: {file, sha256, ema, kind}} of every weight file (VQVAE included), hashed on rank 0 and shared."""
    rank, _ = dist_rank_world()
    out: dict[str, dict[str, Any]] | None = None
    if rank == 0:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)  # checked writable by the pre-flight
        hashes = Fingerprints(cfg.out_dir / FINGERPRINT_CACHE, log)
        out = {}
        for role, w in pre.weights.items():
            digest = hashes.sha256(w.path)
            if w.sidecar is not None:  # an export is its weights and its metadata (subsets, bridge)
                digest = hashlib.sha256((digest + hashes.sha256(w.sidecar)).encode()).hexdigest()
            out[role] = {"file": str(w.path), "sha256": digest, "ema": w.ema, "kind": w.kind}
        out["vqvae"] = {"file": str(pre.vqvae.path), "sha256": hashes.sha256(pre.vqvae.path)}
    if dist.is_available() and dist.is_initialized():
        box = [out]
        dist.broadcast_object_list(box, src=0)
        out = box[0]
    return out


def load_models(pre: Preflight, cfg: EvalConfig, device: torch.device) -> tuple[dict[str, VAR], torch.nn.Module]:
    """The VARs of every role (one object when two roles name the same file) and the VQVAE, frozen, on `device`."""
    models: dict[str, VAR] = {}
    by_file: dict[Path, VAR] = {}
    try:
        for role, w in pre.weights.items():
            key = w.path.resolve()
            if key not in by_file:
                by_file[key] = build_var(w.config, w.state, device)
            models[role] = by_file[key]
        vqvae = load_vqvae(pre.vqvae.path, pre.model_config.patch_nums, cfg.model.vqvae_ch, device)
    except CheckpointError as err:
        raise EvalInputError(str(err)) from err
    return models, vqvae


def build_methods(pre: Preflight, cfg: EvalConfig, models: dict[str, VAR]) -> dict[str, SamplingMethod]:
    """Every row's method, built before any sampling: a knob this model cannot run fails now, not hours later."""
    methods = {}
    for row in pre.plan.rows:
        options = MethodOptions(budget=pre.budget.budget, knobs=dict(cfg.method_options.get(row.method, {})),
                                refiner=models.get("refiner"))
        try:
            methods[row.id] = build_method(row.method, models[row.weights], options)
        except ValueError as err:  # e.g. a block or scale index the model does not have
            raise EvalInputError(f"method {row.method}: {err}") from err
    return methods


def describe_method(method: SamplingMethod) -> str:
    if isinstance(method, StaticPlanMethod):
        return method.plan.describe()
    describe = getattr(method, "describe", None)
    return describe() if callable(describe) else type(method).__name__


def row_weights(row: Row, fingerprints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The fingerprints of the weights a row samples with (CoDe: its refiner too) and the VQVAE."""
    from varianttrain.methods.registry import get_method

    out = {"model": fingerprints[row.weights], "vqvae": fingerprints["vqvae"]["sha256"]}
    for extra in get_method(row.method).needs:
        out[extra] = fingerprints[extra]
    return out


def identity_hash(manifest: dict[str, Any], items: Sequence[WorkItem]) -> str:
    """What makes two rows the same run whatever budget they were asked for: everything but the budget, and the
    images it was scored on (a folder's manifest leaves the image count out, since a run may add images to it; two
    reports of one folder with 100 and 500 images are different numbers)."""
    keep = {k: v for k, v in manifest.items() if k not in ("budget", "batch_size", "weights_files")}
    keep["images"] = [(it.label, it.index) for it in items]
    keep["weights"] = {k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "file"})
                       for k, v in manifest["weights"].items()}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def row_manifest(row: Row, method: SamplingMethod, cfg: EvalConfig, pre: Preflight, sampling,
                 fingerprints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    g = cfg.generation
    weights = row_weights(row, fingerprints)
    return {"method": row.method, "method_knobs": dict(cfg.method_options.get(row.method, {})),
            "plan": describe_method(method), "budget": pre.budget.describe(),
            "sampling_protocol": cfg.sampling.protocol, "sampling": dataclasses.asdict(sampling), "seed": g.seed,
            "seed_rule": g.seed_rule, "rounding": g.rounding, "image_size": pre.image_size,
            "weights": {k: ({kk: vv for kk, vv in v.items() if kk != "file"} if isinstance(v, dict) else v)
                        for k, v in weights.items()},
            "weights_files": {k: v["file"] for k, v in weights.items() if isinstance(v, dict)},
            "batch_size": g.batch_size}


def rng_consumption(var: VAR, vqvae: torch.nn.Module, method: SamplingMethod, sampling, item: WorkItem,
                    device: torch.device) -> str:
    """Fingerprint of the token generator's state after sampling one image: equal for two methods exactly when
    they drew the same number of random numbers (one per token of every scale, in order)."""
    rng = TokenRNG.per_image([item.seed], device=device)
    generate(var, vqvae, torch.tensor([item.label], device=device), sampling, rng, method=method, decode=False)
    return hashlib.sha256(rng.generators[0].get_state().cpu().numpy().tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ metrics
def load_extractor(cfg: EvalConfig, device: torch.device) -> Callable:
    """Inception (torch-fidelity, from the weights file) or the demo classifier, on `device`."""
    m = cfg.metrics
    if m.extractor == "inception":
        from varianttrain.evaluation.metrics import load_inception

        try:
            return load_inception(m.inception_weights, device)
        except RuntimeError as err:  # not an Inception state dict
            raise EvalInputError(f"metrics.inception_weights: {err}") from err
    try:
        return load_demo_extractor(m.demo_classifier).to(device).eval()
    except CheckpointError as err:
        raise EvalInputError(f"metrics.demo_classifier: {err}") from err


def load_reference(cfg: EvalConfig, extractor: Callable, device: torch.device, image_size: int,
                   log: Callable[[str], None]):
    """(reference statistics, reference features for precision/recall or None)."""
    from varianttrain.evaluation.images import IMAGE_EXTENSIONS, list_images
    from varianttrain.evaluation.metrics import extract_pool_features, load_reference_stats, reference_stats_from_folder

    m = cfg.metrics
    ref_feats = None
    try:
        if m.ref_stats is not None:
            ref = load_reference_stats(m.ref_stats)
            if m.precision_recall:
                with np.load(m.ref_stats) as npz:
                    arr = npz["arr_0"]
                log(f"[eval] precision/recall: features of the {len(arr)} reference images of {m.ref_stats}")
                ref_feats = extract_pool_features(
                    extractor, (torch.from_numpy(arr[i:i + m.feature_batch_size]).permute(0, 3, 1, 2)
                                for i in range(0, len(arr), m.feature_batch_size)), device)
            return ref, ref_feats
        ref = reference_stats_from_folder(m.ref_folder, extractor, batch_size=m.feature_batch_size, device=device,
                                          image_size=image_size)
    except (ValueError, OSError) as err:
        raise EvalInputError(f"reference statistics: {err}") from err
    if ref.skipped:
        log(f"[eval] warning: {len(ref.skipped)} unreadable reference image(s) skipped (first: {ref.skipped[0]})")
    if m.precision_recall:
        skipped = set(ref.skipped)
        paths = [p for p in list_images(m.ref_folder, IMAGE_EXTENSIONS, recursive=True) if str(p) not in skipped]
        batches = (torch.stack([load_image(p, image_size) for p in paths[i:i + m.feature_batch_size]])
                   for i in range(0, len(paths), m.feature_batch_size))
        ref_feats = extract_pool_features(extractor, batches, device)
    return ref, ref_feats


def compute_metrics(cfg: EvalConfig, extractor: Callable, sample_dir: Path, items: Sequence[WorkItem], ref,
                    ref_feats, device: torch.device, classifier_classes: int | None,
                    num_classes: int) -> tuple[dict[str, float], PerImage] | None:
    """FID / IS (/ P-R, class accuracy) of the PNGs on disk and their per-image values; collective. Ranks take every
    world-th image; the result on rank 0, None elsewhere."""
    from varianttrain.evaluation.metrics import MetricsAccumulator
    from varianttrain.evaluation.progress import progress_bar

    rank, world = dist_rank_world()
    mine = list(items)[rank::world]
    noise = cfg.metrics.bootstrap_rounds >= 2
    acc = MetricsAccumulator(extractor, device=device, keep_logits=True, keep_features=noise or ref_feats is not None,
                             batch_size=cfg.metrics.feature_batch_size)
    step = cfg.metrics.feature_batch_size
    with progress_bar(total=len(items), desc=f"features {sample_dir.parent.name}") as bar:
        for i in range(0, len(mine), step):
            chunk = mine[i:i + step]
            try:
                images = torch.stack([load_image(sample_dir / sample_name(it.label, it.index)) for it in chunk])
            except UnreadableImage as err:
                raise EvalInputError(f"{err}: delete it and rerun the same command; the run samples it again") from err
            acc.update(images, torch.tensor([it.global_index for it in chunk]))
            bar.update(len(chunk) * world)
    out = acc.compute(ref=ref, ref_features_NF=ref_feats, is_splits=min(cfg.metrics.is_splits, len(items)))
    if out is None:
        return None
    per_image = PerImage(features_NF=acc.gathered_features_NF if noise else None,
                         logits_NK=acc.gathered_logits_NK.double().numpy() if noise else None)
    if classifier_classes is not None and classifier_classes == num_classes:
        labels = np.array([it.label for it in items])
        per_image.correct_N = acc.gathered_logits_NK.argmax(dim=1).numpy() == labels
        out["class_accuracy"] = float(100.0 * per_image.correct_N.mean())
        if not noise:
            per_image.correct_N = None
    return out, per_image


def fidelity_over_ranks(row_dir: Path, ref_dir: Path, items: Sequence[WorkItem], device: torch.device):
    """Per-image PSNR / SSIM of `row_dir` against `ref_dir`, split over ranks, merged on rank 0 (None elsewhere)."""
    from varianttrain.evaluation.fidelity import FidelityScores, folder_fidelity

    rank, world = dist_rank_world()
    names = [sample_name(it.label, it.index) for it in items]
    mine = list(range(rank, len(names), world))
    try:
        scores = folder_fidelity(row_dir, ref_dir, [names[i] for i in mine], device=device) if mine else None
    except UnreadableImage as err:
        raise EvalInputError(f"{err}: delete it and rerun the same command; the run samples it again") from err
    parts = [(mine, scores)]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (mine, scores))
    if rank != 0:
        return None
    psnr, ssim = np.empty(len(names)), np.empty(len(names))
    for idx, s in parts:
        if s is not None:
            psnr[idx], ssim[idx] = s.psnr_N, s.ssim_N
    return FidelityScores(psnr, ssim)


# ------------------------------------------------------------------------------------------------ report parts
def protocol_header(cfg: EvalConfig, sampling, pre: Preflight, world: int, device: torch.device) -> dict[str, Any]:
    """Everything that defines the numbers (printed in every results file, docs/REFERENCES.md E2)."""
    g, m = cfg.generation, cfg.metrics
    n = len(pre.items)
    return {
        "sampling_protocol": cfg.sampling.protocol,
        "sampling": dataclasses.asdict(sampling),
        "cfg_schedule": "guidance t = cfg * k / (K - 1) on logits: (1 + t) cond - t uncond",
        "rejection_sampling": "none",
        "budget": pre.budget.describe(),
        "budget_sources": pre.budget.sources,
        "architecture": pre.model_config.describe(),
        "samples": f"{n} = {g.samples_per_class} per class x {n // g.samples_per_class} classes",
        "seeds": f"per image, rule '{g.seed_rule}', base seed {g.seed} (varianttrain.evaluation.seeds)",
        "batch_size": g.batch_size,
        "image_quantisation": g.rounding,
        "image_size": pre.image_size,
        "metrics": ("off" if pre.metrics is None else
                    f"{pre.metrics.kind}: {m.inception_weights if m.extractor == 'inception' else m.demo_classifier}"
                    f", reference {m.ref_stats or m.ref_folder}, feature batch {m.feature_batch_size}, IS splits "
                    f"{m.is_splits}"),
        "noise": (f"paired bootstrap over images, {m.bootstrap_rounds} rounds, seed {m.bootstrap_seed}; a difference "
                  f"exceeds the noise when |difference| > {Z_SIGNIFICANT:g} x its paired standard error"
                  if pre.metrics is not None and m.bootstrap_rounds >= 2 else "off"),
        "cost": (f"batch sizes {list(cfg.cost.batch_sizes)}, warm-up {cfg.cost.warmup}, repeats {cfg.cost.repeats}, "
                 "median" if cfg.cost.enabled else "off"),
        "device": f"{device} x {world} rank(s)" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                                                   else " (float32: autocast_dtype applies on GPU only)"),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _published(cfg: EvalConfig, pre: Preflight, methods: Sequence[str]) -> list[str]:
    if pre.model_config.depth != 30:  # the anchors are VAR-d30 numbers
        return []
    depth = pre.budget.budget.depth
    keys = set(methods) | ({f"variant@{depth}"} if "variant" in methods else set())
    return [text for key, text in PUBLISHED.get(cfg.sampling.protocol, []) if key in keys]


def _references(rows: list[Row]) -> tuple[Row | None, dict[str, Row | None]]:
    """(the reference every difference is taken against, {row id: the full row its fidelity is measured against}).

    The reference is the sampled full model on the base weights (else on the supernet); a row's fidelity reference
    is the sampled full model on its own weights, else the reference. Full rows have none of their own.
    """
    sampled_full = [r for r in rows if r.method == "full" and not r.reference_only]
    main = next((r for r in sampled_full if r.weights == "base"), sampled_full[0] if sampled_full else None)
    fidelity: dict[str, Row | None] = {}
    for r in rows:
        if r.reference_only:
            continue
        same = next((f for f in sampled_full if f.weights == r.weights), None)
        ref = main if r.method == "full" else (same or main)
        fidelity[r.id] = ref if ref is not None and ref.id != r.id else None
    return main, fidelity


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
    pre = preflight(cfg)
    for text in pre.warnings:
        log(f"[eval] warning: {text}")
    for text in pre.notes:
        log(f"[eval] note: {text}")
    rows, items, run_dir = pre.plan.rows, pre.items, pre.run_dir
    sampling = cfg.sampling.build()
    fingerprints = weight_fingerprints(pre, cfg, log)
    log(f"[eval] loading {', '.join(f'{r} {w.describe()}' for r, w in pre.weights.items())}")
    models, vqvae = load_models(pre, cfg, device)
    methods = build_methods(pre, cfg, models)
    manifests = {row.id: row_manifest(row, methods[row.id], cfg, pre, sampling, fingerprints) for row in rows}
    sampled = [r for r in rows if not r.reference_only and not cfg.cost_only]
    for row in sampled:  # every folder before any sampling: a stale folder must not stop the run half-way
        check_manifest(run_dir / row.id, manifests[row.id], warn=rank == 0)

    extractor = ref = ref_feats = None
    if pre.metrics is not None:  # before any sampling: an unusable extractor or reference fails in seconds
        extractor = load_extractor(cfg, device)
        ref, ref_feats = load_reference(cfg, extractor, device, pre.image_size, log)

    log(f"[eval] rows {[r.id for r in rows]} | {pre.budget.describe()} | {len(items)} images per row | "
        f"{world} rank(s) -> {run_dir}")
    results: list[dict[str, Any]] = []
    per_image: dict[str, PerImage] = {}
    for row in rows:
        method = methods[row.id]
        var = models[row.weights]
        match = method.budget_match
        is_full = row.method == "full"
        reached = None if is_full else match.flop_ratio <= 1 + cfg.report.budget_tolerance
        result: dict[str, Any] = {
            "row": row.id, "method": row.method, "weights_role": row.weights,
            "weights": row_weights(row, fingerprints),
            "status": "reference, cost only" if row.reference_only else ("cost only" if cfg.cost_only else "ok"),
            "plan": describe_method(method), "knobs": manifests[row.id]["method_knobs"],
            "flops_closed_form_per_image": match.flops.total, "budget_flops_per_image": match.target_flops,
            "flop_ratio": match.flop_ratio, "budget_note": match.note, "budget_reached": reached,
            "run_identity": identity_hash(manifests[row.id], items)}
        row_dir = run_dir / row.id
        if row in sampled:
            log(f"[eval] {row.id}: sampling {len(items)} images into {row_dir / 'samples'}")
            gen = generate_samples(var, vqvae, method, sampling, items, cfg.generation.batch_size, row_dir,
                                   manifests[row.id], rounding=cfg.generation.rounding, device=device,
                                   save_npz=cfg.generation.save_npz, log=log)
            result.update(num_samples=len(items), samples_dir=str(gen.sample_dir),
                          npz=str(gen.npz) if gen.npz else None, flops_per_image=gen.flops_per_image,
                          kv_cache_bytes_per_image=gen.kv_cache_bytes_per_image, written_by_rank0=gen.written,
                          skipped_by_rank0=gen.skipped)
            if extractor is not None:
                computed = compute_metrics(cfg, extractor, gen.sample_dir, items, ref, ref_feats, device,
                                           pre.metrics.classifier_classes, pre.model_config.num_classes)
                if computed is not None:
                    result.update(computed[0])
                    per_image[row.id] = computed[1]
        if rank == 0 and items:
            result["rng_state_after_image0"] = rng_consumption(var, vqvae, method, sampling, items[0], device)
        results.append(result)
    if cfg.cost.enabled and rank == 0:
        _add_costs(cfg, results, rows, models, methods, vqvae, sampling, device, log)
    barrier()  # other ranks wait while rank 0 times

    main_ref, fidelity_refs = _references(rows)
    if cfg.metrics.fidelity and sampled:
        for row in sampled:
            ref_row = fidelity_refs.get(row.id)
            if ref_row is None:
                continue
            scores = fidelity_over_ranks(run_dir / row.id / "samples", run_dir / ref_row.id / "samples", items,
                                         device)
            if scores is not None:
                next(r for r in results if r["row"] == row.id)["fidelity"] = {"reference": ref_row.id,
                                                                             **scores.summary()}
    if rank != 0:
        return None
    _add_noise(cfg, results, per_image, ref, device, main_ref)
    _check_rng(results)
    for result in results:
        if result["row"] in {r.id for r in sampled} or result["status"] != "ok":
            (run_dir / result["row"]).mkdir(parents=True, exist_ok=True)
            (run_dir / result["row"] / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")

    names = [r.method for r in rows if not r.reference_only]
    report = {
        "title": f"{', '.join(r.id for r in rows if not r.reference_only)} at {pre.budget.describe()}",
        "budget": {"depth": pre.budget.budget.depth, "total_depth": pre.budget.budget.total_depth,
                   "description": pre.budget.describe(), "flops_per_image": pre.budget.budget.variant_flops(
                       next(iter(models.values()))).total, "sources": pre.budget.sources},
        "metric_kind": pre.metrics.kind if pre.metrics is not None else None,
        "reference_row": main_ref.id if main_ref else None,
        "rows": results, "skipped": [{"method": m, "why": why} for m, why in pre.plan.skipped],
        "warnings": pre.warnings, "notes": pre.notes,
        "protocol": protocol_header(cfg, sampling, pre, world, device),
        "provenance": {"software": software(), "inputs": _input_files(cfg, fingerprints)},
        "published": _published(cfg, pre, names), "config": to_dict(cfg)}
    paths = report_paths(run_dir, cfg.overwrite)
    if cfg.report.grid_columns and sampled:
        from varianttrain.evaluation.grid import grid_columns, side_by_side_grid

        grid_rows = [(f"{r.id}: {Path(fingerprints[r.weights]['file']).name} "
                      f"{fingerprints[r.weights]['sha256'][:8]}", run_dir / r.id / "samples") for r in sampled]
        side_by_side_grid(grid_rows, grid_columns(items, cfg.report.grid_columns), paths.grid)
        report["grid"] = paths.grid.name
    write_report(report, paths)
    report["files"] = {k: str(v) for k, v in dataclasses.asdict(paths).items() if Path(v).exists()}
    log(f"[eval] report: {paths.markdown}")
    return report


def _add_costs(cfg: EvalConfig, results: list[dict[str, Any]], rows: Sequence[Row], models: dict[str, VAR],
               methods: dict[str, SamplingMethod], vqvae: torch.nn.Module, sampling, device: torch.device,
               log: Callable[[str], None]) -> None:
    """Time every row in interleaved rounds (`measure_costs`: shared rounds keep the speedups steady on a busy
    machine) and put each row's cost entries into its result."""
    # A second full row (full@supernet) runs the same network shape as the first: its cost is that row's, by
    # construction, so it is not timed again (one row less in every round).
    full_rows = [row.id for row in rows if row.method == "full"]
    same_as = {rid: full_rows[0] for rid in full_rows[1:]}
    entries = [TimedMethod(row.id, models[row.weights], methods[row.id],
                           [models["refiner"]] if "refiner" in result["weights"] else [])
               for row, result in zip(rows, results, strict=True) if row.id not in same_as]
    log(f"[eval] timing {len(entries)} rows in {cfg.cost.repeats} interleaved rounds at batch sizes "
        f"{list(cfg.cost.batch_sizes)}" + (f" ({', '.join(same_as)}: the same network as {full_rows[0]})"
                                           if same_as else ""))
    costs = measure_costs(entries, vqvae, sampling, cfg.cost.batch_sizes, cfg.cost.warmup, cfg.cost.repeats, device,
                          seed=cfg.generation.seed)
    for result in results:
        timed = same_as.get(result["row"], result["row"])
        result["cost"] = [dict(c.to_dict(), method=result["method"], timed_as=timed) for c in costs[timed]]
        if result.get("flops_per_image") is None and costs[timed]:
            result["flops_per_image"] = costs[timed][-1].flops_per_image


def _input_files(cfg: EvalConfig, fingerprints: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every input file with its hash (weights), or its path (metric inputs: named in the protocol as well)."""
    out = {role: {"file": f["file"], "sha256": f["sha256"]} for role, f in fingerprints.items()}
    m = cfg.metrics
    for key in ("inception_weights", "demo_classifier", "ref_stats", "ref_folder"):
        value = getattr(m, key)
        if value is not None and m.enabled and not cfg.cost_only:
            out[key] = {"file": str(value)}
    return out


def _add_noise(cfg: EvalConfig, results: list[dict[str, Any]], per_image: dict[str, PerImage], ref,
               device: torch.device, main_ref: Row | None) -> None:
    """Standard errors of every figure and paired differences against the reference full row and variant."""
    from varianttrain.evaluation.uncertainty import FrechetToReference

    if cfg.metrics.bootstrap_rounds < 2 or not per_image:
        return
    n = len(next(iter(per_image.values())).logits_NK)
    if n < 2:
        return
    indices = bootstrap_indices(n, cfg.metrics.bootstrap_rounds, cfg.metrics.bootstrap_seed)
    fid = FrechetToReference(ref.mu, ref.sigma, device) if ref is not None else None
    comparators = [c for c in ((main_ref.id if main_ref else None), "variant") if c in per_image]
    figures = {row: resample_row(values, fid, indices) for row, values in per_image.items()}
    for result in results:
        mine = figures.get(result["row"])
        if mine is None:
            continue
        result["noise"] = row_noise(mine)
        result["differences"] = {c: row_differences(mine, figures[c]) for c in comparators if c != result["row"]}


def _check_rng(results: list[dict[str, Any]]) -> None:
    """Mark every row whose generator state after image 0 differs from the full model's (never expected)."""
    full = next((r["rng_state_after_image0"] for r in results if r["method"] == "full"
                 and "rng_state_after_image0" in r), None)
    for r in results:
        if "rng_state_after_image0" in r and full is not None:
            r["rng_same_as_full"] = r["rng_state_after_image0"] == full
