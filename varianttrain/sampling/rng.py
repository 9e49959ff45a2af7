"""Random draws of the sampler: one generator for the whole batch (official) or one per image.

Per-image generators make every image a function of its own seed alone, so results do not depend on batch
composition, batch size or the number of GPUs. With one image, both modes issue the same calls in the same order:
`TokenRNG.per_image([s])` reproduces the official `autoregressive_infer_cfg(g_seed=s)` draws.
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

    def multinomial(self, probs_BlV: torch.Tensor) -> torch.Tensor:
        """One token per position, (B, l) int64."""
        B, l, V = probs_BlV.shape
        self._check(B)
        if self.shared:
            return torch.multinomial(probs_BlV.reshape(-1, V), 1, replacement=True,
                                     generator=self.generators[0]).view(B, l)
        return torch.stack([torch.multinomial(probs_BlV[i], 1, replacement=True, generator=g).view(l)
                            for i, g in enumerate(self.generators)])

    def gumbel(self, like_BlV: torch.Tensor) -> torch.Tensor:
        """Gumbel(0, 1) noise drawn as -log(Exponential(1)), the official formula."""
        self._check(like_BlV.shape[0])
        if self.shared:
            return -torch.empty_like(like_BlV).exponential_(generator=self.generators[0]).log()
        return torch.stack([-torch.empty_like(like_BlV[i]).exponential_(generator=g).log()
                            for i, g in enumerate(self.generators)])
