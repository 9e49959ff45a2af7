"""Top-k / top-p filtering and Gumbel noise with the official semantics (docs/REFERENCES.md B6)."""

from __future__ import annotations

import torch


def top_k_top_p_filter_(logits_BlV: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits in place with -inf: first top-k (ties at the threshold kept), then top-p on what is left.

    Top-p sorts ascending, and removes tokens whose ascending cumulative probability is <= 1 - top_p; the most
    likely token always survives.
    """
    V = logits_BlV.shape[-1]
    if top_k > 0 and top_k < V:
        kth_largest = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_largest, float("-inf"))
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove_sorted = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False
        logits_BlV.masked_fill_(remove_sorted.scatter(-1, sorted_idx, remove_sorted), float("-inf"))
    return logits_BlV
