"""Webdataset tar shards -> batches `(img_B3HW in [-1, 1], label_B)`, split explicitly by rank then by worker.

Design (the webdataset behaviours it works around are docs/REFERENCES.md L5-L9, cited in brackets):

- **Splitting.** webdataset's defaults either refuse multi-rank runs (`single_node_only`) or silently duplicate
  data when ranks are read from the environment inside spawn-started workers [L6]. So the rank and world size
  are resolved once in the training process (Lightning trainer, else torch.distributed, else (0, 1)), stored
  on the picklable `ShardStream`, and every worker slices `shards[rank::world][worker::num_workers]` itself.
- **Equal steps per rank.** Each worker cycles over its shards forever (a fresh shard permutation per cycle) and
  `EpochLoader` cuts the stream after exactly `epoch_length // (world * batch)` batches - the loader-level
  `with_epoch` of [L8]. Every rank therefore runs the same number of steps even when shards differ in size.
  When every shard holds the same number of samples and the shard count is a multiple of
  world_size * num_workers, one epoch is exactly one pass (each sample once).
- **Determinism.** Shard order is a permutation seeded by (seed, epoch, cycle), identical on all ranks so the
  rank split stays a partition; each worker's shuffle buffer is seeded by (seed, epoch, cycle, rank, worker)
  (a bare `shuffle(seed=...)` would give every worker the same pattern [L8]).
- **Corrupt samples** never stop training [L9]: unreadable tars, missing fields, undecodable images and bad
  labels are skipped by `SkipCounter`, which logs them (without webdataset's 0.5 s sleep per warning) and
  counts them. The count travels *with each batch* as a third element (skips since the worker's previous
  batch); `EpochLoader` strips it and adds it to `EpochLoader.skipped`. Reporting through the batch needs no
  shared memory, so it works for any num_workers, persistent or not, fork or spawn.
"""

from __future__ import annotations

import glob
import io
import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

log = logging.getLogger(__name__)

IMAGE_FIELDS = ("jpg", "jpeg", "png")  # accepted image members of a sample, first present wins
LABEL_FIELD = "cls"
MIN_SAMPLES_FOR_SKIP_CHECK = 1000  # the skip-fraction limit is only meaningful over a reasonable sample count
LOGGED_SKIPS_PER_WORKER = 20  # log every skip up to this many, then every 100th (a bad shard must not flood logs)


# ------------------------------------------------------------------------------------------------
# Shard lists and splitting
# ------------------------------------------------------------------------------------------------


def expand_shards(pattern: str) -> list[str]:
    """Expand a shard spec: braces ('train-{000000..000127}.tar'), globs ('train-*.tar', sorted), '::'-joined parts."""
    shards: list[str] = []
    for part in pattern.split("::"):
        if any(ch in part for ch in "*?["):
            shards.extend(sorted(glob.glob(part)))
        else:
            shards.extend(expand_urls(part))
    return shards


def dist_info() -> tuple[int, int]:
    """(global rank, world size) from an initialised torch.distributed process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def split_by_rank(shards: Sequence[str], rank: int | None = None, world_size: int | None = None) -> list[str]:
    """The shards of one global rank: `shards[rank::world_size]` (defaults from torch.distributed)."""
    if rank is None or world_size is None:
        rank, world_size = dist_info()
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, world_size={world_size})")
    return list(shards[rank::world_size])


def split_by_worker(shards: Sequence[str], worker_id: int | None = None, num_workers: int | None = None) -> list[str]:
    """The shards of one DataLoader worker: `shards[worker_id::num_workers]` (defaults from get_worker_info())."""
    if worker_id is None or num_workers is None:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    if not 0 <= worker_id < num_workers:
        raise ValueError(f"worker_id {worker_id} is outside [0, num_workers={num_workers})")
    return list(shards[worker_id::num_workers])


def check_enough_shards(
    num_shards: int, world_size: int, num_workers: int, key: str = "data.train_path", warn: bool = True
) -> None:
    """Raise when some reader (rank x worker) would get no shard (webdataset's 'No samples found' [L9]).

    With `warn`, also log when the shards do not divide evenly among the readers.
    """
    readers = world_size * max(num_workers, 1)
    if num_shards < readers:
        raise ValueError(
            f"{key} has {num_shards} shard(s) but world_size={world_size} x num_workers={max(num_workers, 1)} = "
            f"{readers} readers each need at least one; write more, smaller shards "
            f"(python -m varianttrain.data.shards --maxcount N) or lower data.num_workers"
        )
    if warn and num_shards % readers:
        log.warning(
            "%s: %d shards are not a multiple of %d readers (world_size x num_workers); readers get unequal "
            "shard counts, so within an epoch some samples repeat and others are left for the next one",
            key, num_shards, readers,
        )


# ------------------------------------------------------------------------------------------------
# Corrupt-sample accounting and decoding
# ------------------------------------------------------------------------------------------------


class SkipCounter:
    """Counts and logs skipped (corrupt) samples of one worker; picklable, one copy lives in each worker.

    `seen` counts samples attempted, `skipped` those dropped, `pending` the skips not yet reported through a
    batch (see `pop_pending`). Tar-level errors (unreadable or truncated shard) count as one skip each, since
    the number of samples lost with them is unknown.
    """

    def __init__(self, max_skip_fraction: float = 1.0, where: str = "") -> None:
        self.max_skip_fraction = max_skip_fraction
        self.where = where  # e.g. "rank 1 worker 0", for log lines
        self.seen = 0
        self.skipped = 0
        self.pending = 0

    def skip(self, exn: BaseException, key: str = "?", url: str = "?") -> bool:
        """Record one skipped sample and log it; returns True ("continue") so it can serve as a webdataset handler."""
        self.skipped += 1
        self.pending += 1
        if self.skipped <= LOGGED_SKIPS_PER_WORKER or self.skipped % 100 == 0:
            log.warning("skipped corrupt sample %s in %s (%s, %d skipped so far): %r",
                        key, url, self.where or "main process", self.skipped, exn)
        self._check_rate()
        return True

    def handle_tar_error(self, exn: Exception) -> bool:
        """webdataset `handler=` for the tar reading stages: count, log, continue (never sleeps, unlike [L9])."""
        return self.skip(exn, key="<tar member>", url=str(exn.args[-1]) if exn.args else "?")

    def pop_pending(self) -> int:
        """Skips since the previous call; the worker attaches this to the batch it is about to yield."""
        pending, self.pending = self.pending, 0
        return pending

    def _check_rate(self) -> None:
        # Compare against samples attempted; tar-level errors may make skipped exceed seen early on.
        if self.seen >= MIN_SAMPLES_FOR_SKIP_CHECK and self.skipped > self.max_skip_fraction * self.seen:
            raise RuntimeError(
                f"{self.skipped} of {self.seen} samples were corrupt in {self.where or 'main process'}, above "
                f"data.max_skip_fraction={self.max_skip_fraction}; check the shards (see warnings above)"
            )


def decode_sample(sample: dict, transform: Callable[[Image.Image], torch.Tensor], num_classes: int) -> tuple:
    """(image tensor, label) from a raw webdataset sample; raises on any defect (the caller counts the skip)."""
    field = next((f for f in IMAGE_FIELDS if f in sample), None)
    if field is None:
        raise ValueError(f"no image field ({'/'.join(IMAGE_FIELDS)}) in sample, fields {sorted(sample)}")
    if LABEL_FIELD not in sample:
        raise ValueError(f"no '{LABEL_FIELD}' field in sample, fields {sorted(sample)}")
    label = int(sample[LABEL_FIELD].decode("ascii").strip())  # ValueError for non-integer text
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside [0, {num_classes})")
    with Image.open(io.BytesIO(sample[field])) as img:
        # convert() forces the full decode, so truncated/garbled files fail here rather than in the transform.
        # (PIL's LOAD_TRUNCATED_IMAGES stays False: a half-grey image is worse than a skipped one.)
        rgb = img.convert("RGB")
    return transform(rgb), label


def buffered_shuffle(items: Iterator, bufsize: int, rng: np.random.Generator) -> Iterator:
    """Shuffle a stream with a buffer of `bufsize` items: each output is a uniformly random buffered item."""
    if bufsize <= 1:
        yield from items
        return
    buf: list = []
    for item in items:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        j = int(rng.integers(bufsize))
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


# ------------------------------------------------------------------------------------------------
# Worker-side stream and main-process loader
# ------------------------------------------------------------------------------------------------


class ShardStream(IterableDataset):
    """Endless stream of `(img_B3HW, label_B, skipped_since_last_batch)` for one rank; picklable.

    Built in the training process with explicit `rank`/`world_size`; the worker split happens at iteration time
    from `get_worker_info()`. `train=False` disables shard permutation and the shuffle buffer (validation).
    `key` names the config entry of the shards in error messages.
    """

    def __init__(
        self,
        shards: Sequence[str],
        transform: Callable[[Image.Image], torch.Tensor],
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        train: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        num_classes: int = 1000,
        max_skip_fraction: float = 1.0,
        key: str = "data.train_path",
    ) -> None:
        super().__init__()
        if not shards:
            raise ValueError("ShardStream needs at least one shard")
        self.shards = list(shards)
        self.transform = transform
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.train = train
        self.shuffle_buffer = shuffle_buffer if train else 0
        self.seed = seed
        self.num_classes = num_classes
        self.counter = SkipCounter(max_skip_fraction)
        self.key = key  # config key of the shard spec, for error messages
        self.epoch = 0
        # Iterations started since the last set_epoch(). Persistent workers keep their dataset copy across epochs,
        # so a set_epoch() in the training process never reaches them; they advance their own epoch instead:
        # epoch used = self.epoch + self._iters_since_set (identical results as long as epochs are consecutive).
        self._iters_since_set = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used to seed the next iteration (called by EpochLoader in the training process)."""
        self.epoch = epoch
        self._iters_since_set = 0

    def worker_shards(self, epoch: int, cycle: int, worker_id: int, num_workers: int) -> list[str]:
        """The shards a worker reads in one cycle: global permutation (same on all ranks), then rank, then worker."""
        order = list(self.shards)
        if self.train:
            perm = np.random.default_rng([self.seed, epoch, cycle]).permutation(len(order))
            order = [order[i] for i in perm]
        return split_by_worker(split_by_rank(order, self.rank, self.world_size), worker_id, num_workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        check_enough_shards(len(self.shards), self.world_size, num_workers, key=self.key, warn=False)
        epoch = self.epoch + self._iters_since_set
        self._iters_since_set += 1
        counter = self.counter
        counter.where = f"rank {self.rank} worker {worker_id}"
        images, labels = [], []
        for cycle in itertools.count():
            shards = self.worker_shards(epoch, cycle, worker_id, num_workers)
            rng = np.random.default_rng([self.seed, epoch, cycle, self.rank, worker_id])
            raw = tarfile_samples(({"url": url} for url in shards), handler=counter.handle_tar_error)
            good = 0
            for sample in buffered_shuffle(raw, self.shuffle_buffer, rng):
                counter.seen += 1
                try:
                    img, label = decode_sample(sample, self.transform, self.num_classes)
                except Exception as exn:  # noqa: BLE001 - any defect of one sample is survivable [L9]
                    counter.skip(exn, sample.get("__key__", "?"), sample.get("__url__", "?"))
                    continue
                good += 1
                images.append(img)
                labels.append(label)
                if len(images) == self.batch_size:
                    yield torch.stack(images), torch.tensor(labels, dtype=torch.long), counter.pop_pending()
                    images, labels = [], []
            if good == 0:  # a full pass without one readable sample would otherwise loop forever
                raise RuntimeError(
                    f"rank {self.rank} worker {worker_id}: no readable sample in shards {shards} "
                    f"({counter.skipped} skipped so far; see warnings above)"
                )


class EpochLoader:
    """Main-process loader: exactly `batches_per_epoch` batches `(img_B3HW, label_B)` per `iter()`.

    Wraps a DataLoader over a `ShardStream` (batch_size=None: batching happens in the workers). Each `iter()`
    first sets the stream's epoch (from `epoch_fn`, e.g. the trainer's current epoch; when it is absent or returns
    None, from an internal counter: 0, 1, 2, ...),
    then caps the endless stream - the per-rank `with_epoch` of docs/REFERENCES.md L8. `skipped` accumulates the
    corrupt-sample counts that the workers send along with the batches.
    """

    def __init__(
        self,
        dataset: ShardStream,
        batches_per_epoch: int,
        *,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int = 2,
        epoch_fn: Callable[[], int | None] | None = None,
        generator_seed: int = 0,
    ) -> None:
        if batches_per_epoch <= 0:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.dataset = dataset
        self.batches_per_epoch = batches_per_epoch
        self.epoch_fn = epoch_fn
        self.skipped = 0  # corrupt samples skipped by this rank's workers, over the loader's lifetime
        self._next_epoch = 0
        workers_kw = {}
        if num_workers > 0:
            workers_kw = dict(persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)
        # The generator fixes the per-epoch base seed of the workers' torch RNG (random crops, flips).
        self.loader = DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(generator_seed),
            **workers_kw,
        )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self._next_epoch if epoch is None else epoch
        self._next_epoch = epoch + 1
        # Before iter(): non-persistent workers copy the dataset when the iterator starts them.
        self.dataset.set_epoch(epoch)
        stream = iter(self.loader)
        for step in range(self.batches_per_epoch):
            try:
                img_B3HW, label_B, skipped = next(stream)
            except StopIteration:  # cannot happen with the endless ShardStream; guard against silent DDP hangs
                raise RuntimeError(
                    f"rank {self.dataset.rank}: stream ended after {step} of {self.batches_per_epoch} batches"
                ) from None
            self.skipped += int(skipped)
            yield img_B3HW, label_B


def batches_per_rank(num_samples: int, world_size: int, batch_size: int, key: str = "data.epoch_length") -> int:
    """Batches each rank yields for `num_samples` samples per epoch summed over ranks (floor; at least one)."""
    n = num_samples // (world_size * batch_size)
    if n < 1:
        raise ValueError(
            f"{key}={num_samples} samples is less than one batch per rank (world_size={world_size} x "
            f"batch_size={batch_size}); raise {key} or lower the batch size"
        )
    return n


def missing_local_shards(shards: Sequence[str]) -> list[str]:
    """Local shard paths that do not exist (URLs with a scheme, 'pipe:' etc. are not checked)."""
    return [s for s in shards if "://" not in s and not s.startswith("pipe:") and not os.path.exists(s)]
