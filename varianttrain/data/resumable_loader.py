"""The map-style loader of the data layer: a deterministic order per (seed, epoch), split across ranks, resumable
mid-epoch from a Lightning checkpoint.

A shuffling `DataLoader` draws its order from one generator over the run, so the order of epoch e depends on how
many epochs this process has already seen, and a resumed run sees a different order. Here the order of epoch e is
a permutation seeded by (seed, e), whatever happened before, and the loader's state in a checkpoint (epoch, batches
consumed) lets a resumed run skip exactly the batches it already trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader, Sampler


class EpochPermutationSampler(Sampler[int]):
    """This rank's share of a permutation seeded by (seed, epoch): the same order however often a run resumes.

    Every rank gets len // world indices (the tail is dropped so all ranks run the same number of steps). Lightning
    calls `set_epoch` at every epoch start. `skip` leaves out the first indices of the next iteration (mid-epoch
    resume).
    """

    def __init__(self, size: int, seed: int, rank: int, world_size: int, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle \
            else np.arange(self.size)
        mine = order[: len(self) * self.world_size][self.rank::self.world_size]
        skip, self.skip = self.skip, 0
        yield from (int(i) for i in mine[skip:])


class ResumableDataLoader(DataLoader):
    """DataLoader whose state (epoch, batches consumed) is saved in Lightning checkpoints (`_Stateful`).

    The consumed count is Lightning's own batch progress at save time (not the loader's, which runs ahead by the
    prefetched batches); on resume the sampler skips exactly those batches of that epoch.
    """

    def __init__(self, *args, progress_fn: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(*args, **kwargs)
        self.progress_fn = progress_fn

    def state_dict(self) -> dict:
        epoch, consumed = self.progress_fn()
        return {"epoch": epoch, "consumed_batches": consumed}

    def load_state_dict(self, state: dict) -> None:
        sampler: EpochPermutationSampler = self.sampler
        consumed = int(state.get("consumed_batches", 0))
        if 0 < consumed < len(self):
            sampler.set_epoch(int(state["epoch"]))
            sampler.skip = consumed * self.batch_size
