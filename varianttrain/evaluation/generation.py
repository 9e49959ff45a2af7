"""Generate evaluation samples for one method: PNGs named by (class, index), resumable, sharded over ranks.

Layout: ``<out>/<method>/samples/c0007_i00012.png`` (see `seeds.sample_name`), ``<out>/<method>/manifest.json``
(what produced the samples) and, after all ranks are done, ``<out>/<method>/samples.npz`` (ADM evaluator format:
``arr_0`` NHWC uint8 in class-major order, ``arr_1`` the labels), written by rank 0.

Resuming: a batch whose PNGs all exist is skipped without running the model. A batch with some PNGs missing
(a run killed in the middle of writing it, or files deleted by hand) is sampled again as a whole -- so every image
keeps the exact batch it has in a fresh run, see `seeds` -- but only the missing files are written; existing PNGs
are never rewritten. Each PNG is written to a temporary name and renamed, so a killed run leaves no half-written
image under a final name.

The manifest is the identity of a sample folder: the method, its knobs and plan, the budget, the sampling protocol
and settings, the seeds, the rounding, the image size, and the SHA-256 of every weight file that made the images
(the VAR with its EMA choice, CoDe's refiner, the VQVAE). A folder whose manifest differs in any of them, or that
holds PNGs without a manifest, is refused (`ManifestMismatch`): its images are never credited to other settings.
A full or read-only disk while writing stops the run with `OutputWriteError`; finished images are kept.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from varianttrain.evaluation.images import RoundingRule, pack_adm_npz, save_png, to_uint8
from varianttrain.evaluation.seeds import WorkItem, batches, sample_name, shard_batches
from varianttrain.models.var import VAR
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, generate

# Manifest fields that change the images: a resumed run must agree on all of them. "weights" holds fingerprints
# (SHA-256 + EMA choice), not paths: a moved file is the same weights, a replaced file at the same path is not.
IDENTITY_KEYS = ("method", "method_knobs", "plan", "budget", "sampling_protocol", "sampling", "seed", "seed_rule",
                 "rounding", "image_size", "weights")
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)


class ManifestMismatch(RuntimeError):
    """Samples already in the output folder were made with different settings (or by something unknown)."""


class OutputWriteError(RuntimeError):
    """The output folder stopped accepting files (full, read-only, no permission); the message says what to do."""


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _write_atomic_png(path: Path, img_3HW: torch.Tensor, rank: int) -> None:
    tmp = path.with_name(f".{path.name}.rank{rank}.tmp")
    try:
        save_png(tmp, img_3HW)
        os.replace(tmp, path)  # atomic on POSIX: readers see no file or the whole file
    finally:
        tmp.unlink(missing_ok=True)


def _write_png_or_stop(path: Path, img_3HW: torch.Tensor, rank: int) -> None:
    try:
        _write_atomic_png(path, img_3HW, rank)
    except OSError as err:
        if err.errno in DISK_ERRORS:
            raise OutputWriteError(f"could not write {path}: {os.strerror(err.errno)}. The images written so far are "
                                   "complete and kept: free space (or fix the permissions) and rerun the same command "
                                   "to continue, or choose another --out") from err
        raise


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def check_manifest(method_dir: Path, manifest: dict[str, Any], warn: bool = True) -> None:
    """Check that an existing manifest describes the same images (read-only, so every rank can run it).

    Raises:
        ManifestMismatch: an identity field differs (the message lists them and the two ways out).
    """
    path = method_dir / "manifest.json"
    way_out = f"use another --out, or delete {method_dir} to regenerate"
    if not path.is_file():
        if any((method_dir / "samples").glob("*.png")):
            raise ManifestMismatch(f"{method_dir / 'samples'} holds images but no manifest.json: what made them is "
                                   f"unknown, so they cannot be reused; {way_out}")
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ManifestMismatch(f"{path} is not readable JSON ({err}); {way_out}") from err
    diffs = [f"{k}: on disk {old.get(k)!r}, now {manifest.get(k)!r}" for k in IDENTITY_KEYS
             if json.dumps(old.get(k), sort_keys=True) != json.dumps(manifest.get(k), sort_keys=True)]
    if diffs:
        raise ManifestMismatch(f"{path}: the samples there were generated with other settings:\n  "
                               + "\n  ".join(diffs) + f"\nThey are not reused: {way_out}.")
    if warn and old.get("batch_size") != manifest.get("batch_size"):
        # Images depend on their batch only through kernel numerics; keep going but say so.
        print(f"[eval] note: {path} was started with batch_size {old.get('batch_size')}, now "
                  f"{manifest.get('batch_size')}; resumed images may differ in the last bits", file=sys.stderr)


@dataclass
class GenerationResult:
    """What one rank did for one method (`flops_per_image` / `kv_cache_bytes` from the batches it sampled)."""

    method: str
    sample_dir: Path
    written: int = 0
    skipped: int = 0
    batches_sampled: int = 0
    seconds: float = 0.0
    flops_per_image: float | None = None  # SampleOutput.flops / batch, mean over sampled batches
    kv_cache_bytes_per_image: float | None = None
    npz: Path | None = None
    samples_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _npz_up_to_date(npz: Path, paths: Sequence[Path], labels: Sequence[int]) -> bool:
    """The packed file exists, holds exactly these labels, and no PNG is newer than it."""
    if not npz.is_file() or max(p.stat().st_mtime_ns for p in paths) > npz.stat().st_mtime_ns:
        return False
    try:
        with np.load(npz) as packed:  # lazy: reads only arr_1, not the images
            return "arr_1" in packed.files and packed["arr_1"].tolist() == list(labels)
    except Exception:  # noqa: BLE001 - a damaged file (bad zip, truncated npy, ...) is simply packed again
        return False


def generate_samples(var: VAR, vqvae: torch.nn.Module, method: SamplingMethod, sampling: SamplingConfig,
                     items: Sequence[WorkItem], batch_size: int, method_dir: Path, manifest: dict[str, Any],
                     rounding: RoundingRule = "truncate", device: torch.device | str = "cpu", save_npz: bool = True,
                     log: Callable[[str], None] | None = None) -> GenerationResult:
    """Generate the PNGs of this rank's share of `items` for `method`; then (rank 0) pack the ADM npz.

    Collective when torch.distributed is initialised: every rank must call it with the same items and batch size.
    """
    rank, world = dist_rank_world()
    device = torch.device(device)
    sample_dir = method_dir / "samples"
    # Every rank checks (same files, same verdict: no rank is left waiting in a barrier); rank 0 writes.
    check_manifest(method_dir, manifest, warn=rank == 0)
    barrier()
    if rank == 0:
        sample_dir.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(method_dir / "manifest.json", manifest)
    barrier()
    mine = shard_batches(batches(items, batch_size), rank, world)
    result = GenerationResult(method=getattr(method, "name", "?"), sample_dir=sample_dir, samples_total=len(items))
    for stale in sample_dir.glob(f".*.rank{rank}.tmp"):  # left by a killed run of this rank
        stale.unlink(missing_ok=True)
    flops, kv, start = [], [], time.perf_counter()
    from varianttrain.evaluation.progress import progress_bar

    with progress_bar(total=sum(len(b) for b in mine), desc=f"sampling {result.method}") as bar:
        for batch in mine:
            paths = [sample_dir / sample_name(it.label, it.index) for it in batch]
            missing = [i for i, p in enumerate(paths) if not p.is_file()]
            if not missing:
                result.skipped += len(batch)
                bar.update(len(batch))
                continue
            labels = torch.tensor([it.label for it in batch], dtype=torch.int64, device=device)
            rng = TokenRNG.per_image([it.seed for it in batch], device=device)
            out = generate(var, vqvae, labels, sampling, rng, method=method, decode=True)
            images = to_uint8(out.images_B3HW, rounding).cpu()
            for i in missing:
                _write_png_or_stop(paths[i], images[i], rank)
            result.written += len(missing)
            result.skipped += len(batch) - len(missing)
            result.batches_sampled += 1
            flops.append(out.flops / len(batch))
            kv.append(out.kv_cache_bytes / len(batch))
            bar.update(len(batch))
    result.seconds = time.perf_counter() - start
    if flops:
        result.flops_per_image = sum(flops) / len(flops)
        result.kv_cache_bytes_per_image = sum(kv) / len(kv)
    barrier()  # every rank's PNGs are on disk
    if rank == 0 and save_npz:
        all_paths = [sample_dir / sample_name(it.label, it.index) for it in items]
        absent = [p.name for p in all_paths if not p.is_file()]
        if absent:
            raise RuntimeError(f"{len(absent)} samples missing in {sample_dir} after generation "
                               f"(first: {absent[:3]}); rerun to resume")
        npz = method_dir / "samples.npz"
        # A resumed run that found everything done keeps the packed file (packing 50k PNGs takes minutes).
        if not _npz_up_to_date(npz, all_paths, [it.label for it in items]):
            try:
                pack_adm_npz(all_paths, npz, expected_count=len(items), labels=[it.label for it in items])
            except OSError as err:
                if err.errno in DISK_ERRORS:
                    raise OutputWriteError(f"could not write {npz}: {os.strerror(err.errno)}; the samples are "
                                           "complete: free space (or set generation.save_npz=false) and rerun") from err
                raise
        result.npz = npz
    barrier()
    return result
