"""The official scale-wise training loss of VAR (official `VARTrainer.train_step`; docs/REFERENCES.md B16).

`SupernetModule.training_step` trains with `var_loss`, and the golden test (tests/test_var_golden.py) checks
`var_loss` against the official code's numbers, so the loss that is tested is the loss that trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def token_cross_entropy(logits_BLV: torch.Tensor, target_BL: torch.Tensor,
                        label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-token cross-entropy (B, L) in float32."""
    B, L, V = logits_BLV.shape
    return F.cross_entropy(logits_BLV.float().reshape(-1, V), target_BL.reshape(-1),
                           label_smoothing=label_smoothing, reduction="none").view(B, L)


def var_loss(logits_BLV: torch.Tensor, target_BL: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Every token weighted 1/L, summed over tokens, averaged over the batch: plain token-mean CE."""
    ce_BL = token_cross_entropy(logits_BLV, target_BL, label_smoothing)
    return ce_BL.mul(1.0 / ce_BL.shape[1]).sum(dim=1).mean()


def per_scale_mean(values_BL: torch.Tensor, patch_nums: Sequence[int]) -> list[torch.Tensor]:
    """Mean of a per-token quantity over each scale's tokens: one scalar per scale."""
    out, begin = [], 0
    for pn in patch_nums:
        end = begin + pn * pn
        out.append(values_BL[:, begin:end].float().mean())
        begin = end
    return out
