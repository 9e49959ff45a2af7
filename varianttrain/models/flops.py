"""Matmul FLOPs of VAR, counted from what a depth plan runs (2 FLOPs per multiply-accumulate).

Only linear layers and the two attention products are counted (norms, softmax, elementwise ops ignored), the
convention of docs/REFERENCES.md#flop-convention. Per block and token: 12 C^2 MACs (qkv 3, proj 1, fc1 4, fc2 4);
attention of n queries over T keys: 2 n T C MACs; AdaLN projection 6 C^2 per row; head n C V + 2 C^2 per row.
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


@dataclass(frozen=True)
class BudgetMatch:
    """How a built sampling method meets the run's compute budget (closed form, one image, CFG included).

    Attributes:
        target_flops: the budget, the FLOPs of the VARiant subnet it names.
        flops: what the method runs as built (equal to the sampler's count for the built-in methods).
        note: how the budget was met (the knob that was solved and its value), or why it was not.
    """

    target_flops: int
    flops: FlopCounter
    note: str

    @property
    def flop_ratio(self) -> float:
        """The method's FLOPs over the budget's: 1.0 is an exact match, > 1 over budget."""
        return self.flops.total / self.target_flops


def token_sampling_flops(width: int, vocab: int, z_channels: int, patch_nums: Sequence[int],
                         tokens_per_block: Sequence[Sequence[int]], rows: int | Sequence[int] = 2,
                         modulation_per_scale: bool = False) -> FlopCounter:
    """Closed-form FLOPs of KV-cached sampling of one image, from what runs at each scale: the one cost formula.

    Args:
        tokens_per_block: `tokens_per_block[k][b]` = tokens of scale k that run block b (N_k for every block of the
            full model, 0 where the block is skipped).
        rows: rows one image occupies, 2 with CFG and 1 without; one per scale when a CFG branch is dropped part way.
        modulation_per_scale: the official sampler recomputes the AdaLN projection at every scale; ours computes
            it once per call. True reproduces the official sampler's counts (REFERENCES.md#flop-convention).

    Mirrors `varianttrain.sampling.sampler.generate`: a block's keys are its cache length after appending the
    current tokens; the head runs on every token; the next scale's embedding is counted with the current scale's
    rows; each block's AdaLN modulation is computed once, with the first scale's rows, if the block runs anywhere.
    """
    rows_per_scale = [rows] * len(patch_nums) if isinstance(rows, int) else list(rows)
    depth = len(tokens_per_block[0])
    if len(tokens_per_block) != len(patch_nums) or len(rows_per_scale) != len(patch_nums) or any(
            len(per_block) != depth for per_block in tokens_per_block):
        raise ValueError(f"need one row count and one token count per block ({depth}) for each of the "
                         f"{len(patch_nums)} scales; got {len(rows_per_scale)} row counts and token rows of lengths "
                         f"{[len(per_block) for per_block in tokens_per_block]}")
    counter = FlopCounter()
    cached = [0] * depth  # keys held by each block's cache so far
    for k, (pn, per_block, r) in enumerate(zip(patch_nums, tokens_per_block, rows_per_scale, strict=True)):
        for b, n in enumerate(per_block):
            if n:
                cached[b] += n
                counter.add_block(r, n, cached[b], width)
        if modulation_per_scale:
            counter.add_modulation(r, width, sum(1 for n in per_block if n))
        counter.add_head(r, pn * pn, width, vocab)
        if k + 1 < len(patch_nums):
            counter.add_embed(r, patch_nums[k + 1] ** 2, z_channels, width)
    if not modulation_per_scale:
        ran = sum(1 for b in range(depth) if any(per_block[b] for per_block in tokens_per_block))
        counter.add_modulation(rows_per_scale[0], width, ran)
    return counter


def sampling_flops(width: int, vocab: int, z_channels: int, patch_nums: Sequence[int],
                   blocks_per_scale: Sequence[Sequence[int]], cfg: bool = True,
                   modulation_per_scale: bool = False) -> FlopCounter:
    """`token_sampling_flops` of a scale-wise plan: `blocks_per_scale[k]` run for all tokens of scale k.

    `cfg` counts the doubled (conditional + unconditional) batch.
    """
    depth = 1 + max(max(blocks, default=-1) for blocks in blocks_per_scale)
    table = []
    for pn, blocks in zip(patch_nums, blocks_per_scale, strict=True):
        running = set(blocks)
        table.append([pn * pn if b in running else 0 for b in range(depth)])
    return token_sampling_flops(width, vocab, z_channels, patch_nums, table, rows=2 if cfg else 1,
                                modulation_per_scale=modulation_per_scale)


def teacher_forcing_flops(width: int, vocab: int, z_channels: int, patch_nums: Sequence[int],
                          tokens_per_block: Sequence[int]) -> FlopCounter:
    """Closed-form FLOPs of one teacher-forcing forward of one image.

    `tokens_per_block[b]` is the prefix length block b runs on (L for every block of the full model). Attention is
    counted densely over the prefix (the masked kernels evaluate the whole square; docs/REFERENCES.md#flop-convention).
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
