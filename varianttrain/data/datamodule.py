"""`ImageNetDataModule`: one LightningDataModule for webdataset shards, an ImageFolder tree or pre-tokenised indices.

Batches: `(img_B3HW float32 in [-1, 1], label_B int64)` for 'webdataset' / 'imagefolder', `(idx_BL int64,
label_B int64)` for 'indices'.

On-disk layout of the 'indices' format (one directory per split, written by `write_index_dataset`):

    <dir>/idx.npy      (N, L) int16 or int32   VQ code indices of each image, scales concatenated coarse to fine
                                               (L = 680 for VAR-d30 at 256 px); int16 holds VAR's 4096-entry codebook
    <dir>/labels.npy   (N,)   int64            class index (sorted-synset order)
    <dir>/meta.json    {"format": "varianttrain-indices", "version": 1, "num_samples": N, "seq_len": L,
                        "idx_dtype": "int16"}

`idx.pt` / `labels.pt` (tensors saved with torch.save) are accepted in place of the .npy files; .npy is preferred
because it is memory-mapped (1.28 M x 680 int16 = 1.7 GB is not copied into every worker).

Order and distributed reading: webdataset is split by rank inside the pipeline (rank from the trainer, see
webdataset_pipeline.py; its order is a function of (seed, epoch), and a mid-epoch resume restarts the epoch's stream,
which Lightning warns about). The map-style formats ('imagefolder', 'indices') use `ResumableDataLoader`
(resumable_loader.py): every rank reads its own share of a permutation seeded by (seed, epoch), and a resumed run
continues mid-epoch where its checkpoint left off. Both split ranks themselves, so a Lightning Trainer using this
module needs `use_distributed_sampler=False` (the training runner sets it).
Corrupt-sample counts (webdataset only): `skip_counts()` - this rank's totals, for `self.log(...)` in the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from varianttrain.data.checks import data_problems
from varianttrain.data.config import DataConfig
from varianttrain.data.resumable_loader import EpochPermutationSampler, ResumableDataLoader
from varianttrain.data.transforms import build_transform
from varianttrain.data.webdataset_pipeline import (
    EpochLoader,
    ShardStream,
    batches_per_rank,
    check_enough_shards,
    dist_info,
    expand_shards,
)

INDEX_META = "meta.json"
INDEX_FORMAT_TAG = "varianttrain-indices"


# ------------------------------------------------------------------------------------------------
# Pre-tokenised indices
# ------------------------------------------------------------------------------------------------


def write_index_dataset(out_dir: str | Path, idx_NL: np.ndarray | torch.Tensor, labels_N: np.ndarray | torch.Tensor,
                        overwrite: bool = False) -> Path:
    """Write VQ index sequences (N, L) and labels (N,) in the 'indices' layout (module docstring); returns out_dir.

    Indices are stored as int16 when they fit (VAR's codebook has 4096 entries), else int32.
    """
    idx_NL = idx_NL.cpu().numpy() if isinstance(idx_NL, torch.Tensor) else np.asarray(idx_NL)
    labels_N = labels_N.cpu().numpy() if isinstance(labels_N, torch.Tensor) else np.asarray(labels_N)
    if idx_NL.ndim != 2 or labels_N.ndim != 1 or len(idx_NL) != len(labels_N):
        raise ValueError(f"expected idx (N, L) and labels (N,), got {idx_NL.shape} and {labels_N.shape}")
    if not np.issubdtype(idx_NL.dtype, np.integer) or not np.issubdtype(labels_N.dtype, np.integer):
        raise ValueError(f"indices and labels must be integers, got {idx_NL.dtype} and {labels_N.dtype}")
    if idx_NL.size and idx_NL.min() < 0:
        raise ValueError("VQ indices must be non-negative")
    out = Path(out_dir)
    if (out / INDEX_META).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an index dataset; pass overwrite=True to replace it")
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.int16 if idx_NL.size == 0 or idx_NL.max() <= np.iinfo(np.int16).max else np.int32
    np.save(out / "idx.npy", idx_NL.astype(dtype))
    np.save(out / "labels.npy", labels_N.astype(np.int64))
    meta = {"format": INDEX_FORMAT_TAG, "version": 1, "num_samples": int(len(labels_N)),
            "seq_len": int(idx_NL.shape[1]), "idx_dtype": np.dtype(dtype).name}
    (out / INDEX_META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _load_array(root: Path, stem: str, key: str) -> np.ndarray:
    if (root / f"{stem}.npy").is_file():
        return np.load(root / f"{stem}.npy", mmap_mode="r")
    if (root / f"{stem}.pt").is_file():
        return torch.load(root / f"{stem}.pt", weights_only=True).numpy()
    raise FileNotFoundError(
        f"{key}: {root} has neither {stem}.npy nor {stem}.pt (layout: varianttrain/data/datamodule.py docstring)"
    )


class IndexDataset(Dataset):
    """Map-style dataset over an 'indices' directory; item = (idx_L int64, label int64)."""

    def __init__(self, root: str | Path, key: str = "data.train_path") -> None:
        self.root = Path(root)
        self.idx_NL = _load_array(self.root, "idx", key)
        self.labels_N = _load_array(self.root, "labels", key)
        if self.idx_NL.ndim != 2 or self.labels_N.shape != (self.idx_NL.shape[0],):
            raise ValueError(f"{key}: {self.root} holds idx {self.idx_NL.shape} and labels {self.labels_N.shape}, "
                             "expected (N, L) and (N,)")

    def __len__(self) -> int:
        return len(self.labels_N)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # int64 because nn.Embedding / cross-entropy targets need long; the copy also detaches from the memmap.
        return torch.from_numpy(self.idx_NL[i].astype(np.int64)), torch.tensor(int(self.labels_N[i]))


# ------------------------------------------------------------------------------------------------
# DataModule
# ------------------------------------------------------------------------------------------------


class ImageNetDataModule(L.LightningDataModule):
    """Train/val loaders for a `DataConfig`; rank/world_size default to the trainer's (or torch.distributed's)."""

    def __init__(self, cfg: DataConfig, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self._rank, self._world_size = rank, world_size
        self._train_loader: EpochLoader | None = None
        self._val_loader: EpochLoader | None = None
        self._datasets: dict[str, Dataset] = {}

    # -- helpers ---------------------------------------------------------------------------------

    def rank_world(self) -> tuple[int, int]:
        """(global rank, world size): explicit constructor values, else the trainer's, else torch.distributed's.

        The trainer is preferred over the environment: with spawn-started workers the env/torch.distributed
        lookup inside workers silently duplicates data (docs/REFERENCES.md L6).
        """
        if self._rank is not None and self._world_size is not None:
            return self._rank, self._world_size
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return dist_info()

    def _current_epoch(self) -> int | None:
        # None (no trainer attached) lets the loader count its own epochs.
        return self.trainer.current_epoch if self.trainer is not None else None

    def _check_paths(self) -> None:
        """Raise FileNotFoundError naming every config key whose data is missing or empty."""
        problems = data_problems(self.cfg)
        if problems:
            raise FileNotFoundError("; ".join(problems))

    # -- Lightning hooks ---------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        """Check that the configured paths exist; build the map-style datasets ('imagefolder', 'indices')."""
        self._check_paths()
        cfg = self.cfg
        for split, key in (("train", "train_path"), ("val", "val_path")):
            path = getattr(cfg, key)
            if path is None or split in self._datasets:
                continue
            if cfg.format == "imagefolder":
                from varianttrain.data.image_folder import SkippingImageFolder

                tf = build_transform(cfg.resolution, train=split == "train", hflip=cfg.hflip)
                self._datasets[split] = SkippingImageFolder(path, transform=tf,
                                                            max_skip_fraction=cfg.max_skip_fraction)
            elif cfg.format == "indices":
                self._datasets[split] = IndexDataset(path, key=f"data.{key}")

    def train_dataloader(self) -> EpochLoader | ResumableDataLoader:
        """Training batches; webdataset: exactly epoch_length // (world * batch) batches on every rank."""
        if self.cfg.format == "webdataset":
            self._train_loader = self._webdataset_loader(train=True)
            return self._train_loader
        return self._map_loader("train")

    def val_dataloader(self) -> EpochLoader | ResumableDataLoader | list:
        """Validation batches (center crop, no shuffle); an empty list when data.val_path is None."""
        if self.cfg.val_path is None:
            return []
        if self.cfg.format == "webdataset":
            self._val_loader = self._webdataset_loader(train=False)
            return self._val_loader
        return self._map_loader("val")

    def skip_counts(self) -> dict[str, int]:
        """Corrupt samples skipped so far by this rank's train/val loaders: webdataset, and ImageFolder data read in
        the main process (with loader workers each worker counts and logs its own skips)."""
        counts = {}
        for split, loader in (("train", self._train_loader), ("val", self._val_loader)):
            dataset = self._datasets.get(split)
            counts[split] = loader.skipped if loader is not None else getattr(dataset, "skipped", 0)
        return counts

    # -- builders ----------------------------------------------------------------------------------

    def _webdataset_loader(self, train: bool) -> EpochLoader:
        cfg = self.cfg
        key = "train_path" if train else "val_path"
        self._check_paths()
        rank, world = self.rank_world()
        shards = expand_shards(getattr(cfg, key))
        check_enough_shards(len(shards), world, cfg.num_workers, key=f"data.{key}")
        batch = cfg.batch_size if train else cfg.effective_val_batch_size
        n_samples = cfg.epoch_length if train else cfg.val_epoch_length
        stream = ShardStream(
            shards,
            build_transform(cfg.resolution, train=train, hflip=cfg.hflip),
            batch,
            rank=rank,
            world_size=world,
            train=train,
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed,
            num_classes=cfg.num_classes,
            max_skip_fraction=cfg.max_skip_fraction,
            key=f"data.{key}",
        )
        return EpochLoader(
            stream,
            batches_per_rank(n_samples, world, batch, key="data.epoch_length" if train else "data.val_epoch_length"),
            num_workers=cfg.num_workers,
            pin_memory=cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=cfg.persistent_workers,
            prefetch_factor=cfg.prefetch_factor,
            epoch_fn=self._current_epoch if train else None,
            generator_seed=cfg.seed * 100_003 + rank * 2 + int(train),
        )

    def _map_loader(self, split: str) -> ResumableDataLoader:
        if split not in self._datasets:
            self.setup()
        cfg = self.cfg
        train = split == "train"
        rank, world = self.rank_world()
        dataset = self._datasets[split]
        sampler = EpochPermutationSampler(len(dataset), cfg.seed, rank, world, shuffle=train)
        workers_kw = {}
        if cfg.num_workers > 0:
            workers_kw = dict(persistent_workers=cfg.persistent_workers, prefetch_factor=cfg.prefetch_factor)
        return ResumableDataLoader(dataset, batch_size=cfg.batch_size if train else cfg.effective_val_batch_size,
                                   sampler=sampler, drop_last=train, num_workers=cfg.num_workers,
                                   pin_memory=cfg.pin_memory and torch.cuda.is_available(),
                                   progress_fn=self._progress, **workers_kw)

    def _progress(self) -> tuple[int, int]:
        """(epoch, batches Lightning has processed in it): what a checkpoint must record to resume mid-epoch."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
