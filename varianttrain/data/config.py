"""`DataConfig`: every knob of the data layer, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass

DATA_FORMATS = ("webdataset", "imagefolder", "indices")
# VAR's multi-scale VQVAE downsamples by 16 (four stride-2 stages, official `models/basic_vae.py`), so images
# must tile into 16x16 patches.
VQVAE_DOWNSAMPLE = 16


@dataclass(frozen=True)
class DataConfig:
    """Where the data lives and how it is read; one instance per run (`data:` group of the run config)."""

    # 'webdataset': tar shards of <key>.jpg|.jpeg|.png + <key>.cls (see data/README.md);
    # 'imagefolder': torchvision ImageFolder tree <path>/<synset>/<image>;
    # 'indices': pre-tokenised VQ index sequences written by `write_index_dataset` (see datamodule.py).
    format: str = "webdataset"
    # webdataset: brace pattern / glob of shards ('/data/imagenet/train/train-{000000..001281}.tar'), several joined
    # by '::'; imagefolder: the train folder; indices: the train index directory.
    train_path: str = "data/imagenet/train/train-{000000..001281}.tar"
    # Same forms as train_path for the validation split; None = no validation loader.
    val_path: str | None = "data/imagenet/val/val-{000000..000049}.tar"
    resolution: int = 256  # pixels; side of the square image fed to the VQVAE (multiple of 16)
    batch_size: int = 32  # samples per device (per rank) per step
    val_batch_size: int | None = None  # samples per device per validation step; None = batch_size
    num_workers: int = 8  # DataLoader worker processes per rank (0 = load in the training process)
    hflip: bool = False  # random horizontal flip in training (VAR default: off, official `build_dataset`)
    shuffle_buffer: int = 5000  # samples held by each worker's shuffle buffer (webdataset only; 0 or 1 = no shuffle)
    # Samples per training epoch summed over all ranks (webdataset only). Each rank yields exactly
    # epoch_length // (world_size * batch_size) batches; default = ImageNet-1k train size.
    epoch_length: int = 1_281_167
    val_epoch_length: int = 50_000  # samples per validation pass over all ranks (webdataset only)
    seed: int = 0  # base seed of shard order, shuffle buffers and map-style loader shuffling
    num_classes: int = 1000  # labels outside [0, num_classes) are treated as corrupt samples
    # Fail the run when more than this fraction of the samples read by one worker were corrupt (checked after
    # MIN_SAMPLES_FOR_SKIP_CHECK samples); a few odd files are expected, a whole bad shard is not.
    max_skip_fraction: float = 0.01
    pin_memory: bool = True  # page-locked host batches (ignored when CUDA is unavailable)
    persistent_workers: bool = True  # keep loader workers alive between epochs (ignored when num_workers == 0)
    prefetch_factor: int = 2  # batches prefetched per worker (ignored when num_workers == 0)

    def __post_init__(self) -> None:
        """Reject inconsistent values with a message naming the key and the accepted range."""
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data.format must be one of {DATA_FORMATS}, got {self.format!r}")
        if not isinstance(self.train_path, str) or not self.train_path.strip():
            raise ValueError(f"data.train_path must be a non-empty string, got {self.train_path!r}")
        if self.val_path is not None and (not isinstance(self.val_path, str) or not self.val_path.strip()):
            raise ValueError(f"data.val_path must be a non-empty string or None, got {self.val_path!r}")
        if self.resolution <= 0 or self.resolution % VQVAE_DOWNSAMPLE:
            raise ValueError(
                f"data.resolution must be a positive multiple of {VQVAE_DOWNSAMPLE} (the VQVAE downsampling factor),"
                f" got {self.resolution}"
            )
        _positive("batch_size", self.batch_size)
        if self.val_batch_size is not None:
            _positive("val_batch_size", self.val_batch_size)
        _positive("epoch_length", self.epoch_length)
        _positive("val_epoch_length", self.val_epoch_length)
        _positive("num_classes", self.num_classes)
        _positive("prefetch_factor", self.prefetch_factor)
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0 (0 = no shuffle), got {self.shuffle_buffer}")
        if self.seed < 0:
            raise ValueError(f"data.seed must be >= 0 (it seeds numpy SeedSequence), got {self.seed}")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"data.max_skip_fraction must lie in [0, 1], got {self.max_skip_fraction}")
        if self.epoch_length < self.batch_size:
            raise ValueError(
                f"data.epoch_length ({self.epoch_length} samples) is smaller than one batch "
                f"(data.batch_size={self.batch_size}); an epoch would have no steps"
            )

    @property
    def effective_val_batch_size(self) -> int:
        """Per-device validation batch size (val_batch_size, or batch_size when unset)."""
        return self.val_batch_size if self.val_batch_size is not None else self.batch_size


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"data.{name} must be a positive integer, got {value!r}")
