"""Matmul FLOPs of VAR, counted from what a depth plan runs (2 FLOPs per multiply-accumulate).

Only linear layers and the two attention products are counted (norms, softmax, elementwise ops ignored), the
convention of VAR_NOTES.md §7. Per block and token: 12 C^2 MACs (qkv 3, proj 1, fc1 4, fc2 4); attention of n
queries over T keys: 2 n T C MACs; AdaLN projection 6 C^2 per row; head n C V + 2 C^2 per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class FlopCounter:
    """Running FLOP totals by kind; `add_*` take Python ints so counting never touches the device."""

    linear: int = 0
    attention: int = 0
    modulation: int = 0
    head: int = 0
    embed: int = 0

    def add_block(self, rows: int, queries: int, keys: int, width: int) -> None:
        self.linear += 2 * rows * queries * 12 * width * width
        self.attention += 2 * rows * 2 * queries * keys * width

    def add_modulation(self, rows: int, width: int, blocks: int) -> None:
        self.modulation += 2 * rows * blocks * 6 * width * width

    def add_head(self, rows: int, queries: int, width: int, vocab: int) -> None:
        self.head += 2 * rows * (queries * width * vocab + 2 * width * width)

    def add_embed(self, rows: int, queries: int, z_channels: int, width: int) -> None:
        self.embed += 2 * rows * queries * z_channels * width

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.modulation + self.head + self.embed

    def merge(self, other: FlopCounter) -> None:
        for name in ("linear", "attention", "modulation", "head", "embed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def sampling_flops(width: int, vocab: int, z_channels: int, patch_nums: Sequence[int],
                   blocks_per_scale: Sequence[Sequence[int]], cfg: bool = True,
                   modulation_per_scale: bool = False) -> FlopCounter:
    """Closed-form FLOPs of KV-cached sampling of one image under a scale-wise plan.

    Args:
        blocks_per_scale: for each scale, the blocks that run for all its tokens.
        cfg: count the doubled (conditional + unconditional) batch.
        modulation_per_scale: the official sampler recomputes the AdaLN projection at every scale; ours computes
            it once per call. True reproduces the official per-scale table of VAR_NOTES §7.
    """
    rows = 2 if cfg else 1
    counter = FlopCounter()
    depth = 1 + max(max(blocks, default=-1) for blocks in blocks_per_scale)
    cached = [0] * depth  # keys held by each block's cache so far
    for k, (pn, blocks) in enumerate(zip(patch_nums, blocks_per_scale, strict=True)):
        n = pn * pn
        for b in blocks:
            cached[b] += n
            counter.add_block(rows, n, cached[b], width)
        if modulation_per_scale:
            counter.add_modulation(rows, width, len(blocks))
        counter.add_head(rows, n, width, vocab)
        if k + 1 < len(patch_nums):
            counter.add_embed(rows, patch_nums[k + 1] ** 2, z_channels, width)
    if not modulation_per_scale:
        counter.add_modulation(rows, width, len(set().union(*map(set, blocks_per_scale))))
    return counter


def teacher_forcing_flops(width: int, vocab: int, z_channels: int, patch_nums: Sequence[int],
                          tokens_per_block: Sequence[int]) -> FlopCounter:
    """Closed-form FLOPs of one teacher-forcing forward of one image.

    `tokens_per_block[b]` is the prefix length block b runs on (L for every block of the full model). Attention is
    counted densely over the prefix (the masked kernels evaluate the whole square), as in VAR_NOTES §7.
    """
    L = sum(pn * pn for pn in patch_nums)
    counter = FlopCounter()
    for tokens in tokens_per_block:
        if tokens:
            counter.add_block(1, tokens, tokens, width)
            counter.add_modulation(1, width, 1)
    counter.add_head(1, L, width, vocab)
    counter.add_embed(1, L - patch_nums[0] ** 2, z_channels, width)
    return counter
