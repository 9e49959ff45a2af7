"""Which images an evaluation makes, with which seed, on which rank.

An evaluation sample is a pair (class, index), index in [0, samples_per_class). Everything about it is a pure
function of that pair and the base seed, never of the batch it lands in, the batch size or the number of ranks
(docs/REFERENCES.md E1: FID that depends on the GPU count or the batch is a common reproduction failure):

* its seed (`image_seed`), fed to `TokenRNG.per_image`;
* its file name (`sample_name`);
* its global position in the work list (`WorkItem.global_index`: class-major, the order of the ADM `.npz`).

Sharding is by *batch*, not by image: the work list is cut into fixed batches of `batch_size` consecutive items,
and batch j goes to rank j mod world_size. So every image is generated in exactly the same batch (same companions,
same batch size) whatever the world size, which keeps the merged result bit-identical to a single-process run even
where kernels are batch-size dependent (bf16 GEMMs on GPU choose tiles by shape).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

SeedRule = Literal["hash", "index"]
_SEED_BITS = 63  # torch.Generator.manual_seed takes any int; keep it a non-negative int64 for numpy/JSON tools


@dataclass(frozen=True, order=True)
class WorkItem:
    """One sample to generate: class label, index within the class, global position, seed."""

    label: int
    index: int
    global_index: int
    seed: int


def image_seed(base_seed: int, label: int, index: int, rule: SeedRule = "hash") -> int:
    """The per-image seed: a pure function of (base seed, class, index).

    * ``hash`` (default): the first 63 bits of SHA-256 of ``"varianttrain:{base}:{label}:{index}"``: distinct
      streams for every (class, index), no arithmetic collisions whatever the number of samples per class.
    * ``index``: ``base_seed + index``, the CoDe/VARiant protocol ("seeds 0..49 per class",
      docs/REFERENCES.md#sampling-protocols): every class reuses the same seeds (the label makes the images differ).
    """
    if label < 0 or index < 0:
        raise ValueError(f"class and index must be >= 0, got class {label}, index {index}")
    if rule == "index":
        return int(base_seed) + int(index)
    if rule == "hash":
        digest = hashlib.sha256(f"varianttrain:{int(base_seed)}:{int(label)}:{int(index)}".encode()).digest()
        return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)
    raise ValueError(f"unknown seed rule {rule!r}; use 'hash' or 'index' (config key seed_rule)")


def sample_name(label: int, index: int) -> str:
    """File name of a sample: sorts class-major, like the work list (so folder order = `.npz` order)."""
    return f"c{label:04d}_i{index:05d}.png"


def work_list(classes: Sequence[int], samples_per_class: int, base_seed: int,
              rule: SeedRule = "hash") -> list[WorkItem]:
    """Class-balanced list: `samples_per_class` items for each class, class-major, indices ascending."""
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be >= 1, got {samples_per_class}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes contain duplicates: {list(classes)}")
    items = []
    for label in sorted(int(c) for c in classes):
        for index in range(samples_per_class):
            items.append(WorkItem(label, index, len(items), image_seed(base_seed, label, index, rule)))
    return items


def batches(items: Sequence[WorkItem], batch_size: int) -> list[list[WorkItem]]:
    """Fixed, world-size independent batches of consecutive items (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [list(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def shard_batches(all_batches: Sequence[list[WorkItem]], rank: int, world_size: int) -> list[list[WorkItem]]:
    """The batches rank `rank` generates: every `world_size`-th batch starting at `rank`.

    The shards are disjoint and their union is the whole list, for any world size.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
    return list(all_batches[rank::world_size])


def class_list(num_classes: int, classes: Sequence[int] = ()) -> list[int]:
    """Explicit `classes` when given, else 0..num_classes-1."""
    return sorted(int(c) for c in classes) if classes else list(range(num_classes))
