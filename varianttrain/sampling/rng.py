"""Random draws of the sampler: one generator for the whole batch (official) or one per image.

Per-image generators make every image a function of its own seed alone, so results do not depend on batch
composition, batch size or the number of GPUs. With one image, both modes issue the same calls in the same order:
`TokenRNG.per_image([s])` reproduces the official `autoregressive_infer_cfg(g_seed=s)` draws.

A token draw is the one `torch.multinomial(probs, 1, replacement=True)` performs internally for a single sample
(PyTorch, aten/src/ATen/native/Distributions.cpp, `multinomial_out`, the one-sample fast path): Exp(1) noise q
from `empty_like(probs).exponential_(generator)`, then argmax(probs / q). Written out here so that the noise of
every image lands in one buffer and the division and argmax run once per scale for the whole batch, without the
per-call validity checks; the tokens and the generators' states after the draw are bit-identical to
`torch.multinomial`'s.

What cannot be batched: the noise of image i comes from image i's generator, and a PyTorch random kernel takes one
generator per call; its values depend on how that generator's stream maps onto the elements of the call (a seed per
call on the CPU, a Philox offset and the launch grid on CUDA). Drawing the noise of B images in one call would
therefore change every image's tokens, or tie them to the batch they share. Per-image mode keeps one
`exponential_` call per image per scale (B + 3 calls per scale in all, no host sync); shared mode issues 4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class TokenRNG:
    """Multinomial token draws and Gumbel noise from explicit generators."""

    def __init__(self, generators: Sequence[torch.Generator], shared: bool):
        self.generators = list(generators)
        self.shared = shared

    @classmethod
    def shared_seed(cls, seed: int, device: torch.device | str = "cpu") -> TokenRNG:
        """One generator for the whole batch, like the official sampler's `g_seed`."""
        return cls([torch.Generator(device=device).manual_seed(int(seed))], shared=True)

    @classmethod
    def per_image(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> TokenRNG:
        """One generator per image."""
        return cls([torch.Generator(device=device).manual_seed(int(s)) for s in seeds], shared=False)

    def _check(self, batch: int) -> None:
        if not self.shared and batch != len(self.generators):
            raise ValueError(f"{len(self.generators)} per-image seeds for a batch of {batch} images")

    def _exponential(self, like_BlV: torch.Tensor) -> torch.Tensor:
        """Exp(1) noise shaped like `like_BlV`: one draw over the whole tensor, or image i's from generator i."""
        self._check(like_BlV.shape[0])
        noise_BlV = torch.empty_like(like_BlV, memory_format=torch.contiguous_format)
        if self.shared:
            return noise_BlV.exponential_(generator=self.generators[0])
        for i, g in enumerate(self.generators):
            noise_BlV[i].exponential_(generator=g)
        return noise_BlV

    def multinomial(self, probs_BlV: torch.Tensor) -> torch.Tensor:
        """One token per position, (B, l) int64; the draws of `torch.multinomial(probs, 1, replacement=True)`."""
        # The check torch.multinomial makes, once per batch, asserted on the device (no host sync on a GPU).
        low, high = probs_BlV.aminmax()
        torch._assert_async((low >= 0) & (high < float("inf")),
                            "probability tensor contains either `inf`, `nan` or element < 0")
        return probs_BlV.div(self._exponential(probs_BlV)).argmax(dim=-1)

    def gumbel(self, like_BlV: torch.Tensor) -> torch.Tensor:
        """Gumbel(0, 1) noise drawn as -log(Exponential(1)), the official formula."""
        return self._exponential(like_BlV).log_().neg_()
