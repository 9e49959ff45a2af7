"""VAR transformer pieces: l2-normalised self-attention, FFN, AdaLN block and the AdaLN head.

Module and parameter names follow the official release so that `var_d*.pth` loads with strict=True
(FoundationVision/VAR `models/basic_var.py`, `models/var.py`; docs/REFERENCES.md B1, B2, B13).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn

from varianttrain.models.kv_cache import KVCache

# The learnable log-temperature of l2-normalised attention is clamped at ln 100 (docs/REFERENCES.md B2).
MAX_LOG_ATTN_SCALE = math.log(100.0)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/v biases, a zero key-bias buffer and optional l2-normalised q/k."""

    def __init__(self, embed_dim: int, num_heads: int, attn_l2_norm: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_l2_norm = attn_l2_norm
        if attn_l2_norm:
            # Cosine attention with a learnable per-head temperature; the softmax scale is then 1.
            self.scale = 1.0
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, num_heads, 1, 1), 4.0).log())
        else:
            # The official non-normalised path uses 0.25 / sqrt(head_dim), four times smaller than usual.
            self.scale = 0.25 / math.sqrt(self.head_dim)
        self.mat_qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(embed_dim))
        # Keys carry no bias, but the zero vector is a persistent buffer in the released state dicts.
        self.register_buffer("zero_k_bias", torch.zeros(embed_dim))
        self.proj = nn.Linear(embed_dim, embed_dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()
        self.attn_drop = attn_drop

    @torch.no_grad()
    def reset_constant_buffers(self) -> None:
        """The key bias is a constant zero (after building without initialisation)."""
        self.zero_k_bias.zero_()

    def forward(self, x_BlC: torch.Tensor, attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                valid_Bl: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over `x_BlC` (plus the cached keys of earlier scales when `cache` is given).

        Args:
            attn_mask: bool, broadcastable to (B, H, l, T); True = may attend. T = l without a cache, else the cache
                length after appending (a prefill of an empty cache passes its block-causal (l, l) mask).
            cache: KV cache of this block; the new keys/values are appended before attending.
            valid_Bl: bool (B, l) marking real (not padding) tokens; padded keys are never attended.
        """
        B, l, C = x_BlC.shape
        bias = torch.cat((self.q_bias, self.zero_k_bias, self.v_bias))
        qkv = F.linear(x_BlC, self.mat_qkv.weight, bias).view(B, l, 3, self.num_heads, self.head_dim)
        q_BHld, k_BHld, v_BHld = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if self.attn_l2_norm:
            scale_mul = self.scale_mul_1H11.clamp_max(MAX_LOG_ATTN_SCALE).exp()
            q_BHld = F.normalize(q_BHld, dim=-1).mul(scale_mul.to(q_BHld.dtype))
            k_BHld = F.normalize(k_BHld, dim=-1)
        if cache is not None:
            cache.append(k_BHld, v_BHld, valid_Bl)
            k_BHld, v_BHld, valid_BT = cache.keys_values()
            # Decoding attends to every cached key; a prefill of several scales brings its block-causal mask.
            valid_mask = None if valid_BT is None else valid_BT[:, None, None, :]
            if attn_mask is None:
                attn_mask = valid_mask
            elif valid_mask is not None:
                attn_mask = attn_mask & valid_mask
        elif valid_Bl is not None:
            pad_mask = valid_Bl[:, None, None, :]
            attn_mask = pad_mask if attn_mask is None else attn_mask & pad_mask
        dropout = self.attn_drop if self.training else 0.0
        out_BHld = F.scaled_dot_product_attention(q_BHld, k_BHld.to(q_BHld.dtype), v_BHld.to(q_BHld.dtype),
                                                  attn_mask=attn_mask, dropout_p=dropout, scale=self.scale)
        return self.proj_drop(self.proj(out_BHld.transpose(1, 2).reshape(B, l, C)))


class FeedForward(nn.Module):
    """fc1 -> GELU (tanh approximation) -> fc2."""

    def __init__(self, embed_dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, embed_dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block modulated by the class condition (official `AdaLNSelfAttn`).

    The condition projection produces six vectors in the order gamma1, gamma2, scale1, scale2, shift1, shift2
    (docs/REFERENCES.md B1); x += gamma1 * Attn(LN(x)(1+scale1)+shift1), x += gamma2 * FFN(LN(x)(1+scale2)+shift2).
    """

    def __init__(self, embed_dim: int, cond_dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-6, shared_aln: bool = False,
                 attn_l2_norm: bool = True, drop: float = 0.0, attn_drop: float = 0.0):
        super().__init__()
        self.C = embed_dim
        self.attn = SelfAttention(embed_dim, num_heads, attn_l2_norm=attn_l2_norm, attn_drop=attn_drop,
                                  proj_drop=drop)
        self.ffn = FeedForward(embed_dim, round(embed_dim * mlp_ratio), drop=drop)
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.shared_aln = shared_aln
        if shared_aln:
            self.ada_gss = nn.Parameter(torch.randn(1, 1, 6, embed_dim) / embed_dim**0.5)
        else:
            self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 6 * embed_dim))

    def modulation(self, cond_BD: torch.Tensor) -> torch.Tensor:
        """(B, 1, 6, C) modulation vectors; with shared AdaLN `cond_BD` is the shared projection (B, 1, 6, C)."""
        if self.shared_aln:
            return cond_BD + self.ada_gss
        return self.ada_lin(cond_BD).view(-1, 1, 6, self.C)

    def forward(self, x_BlC: torch.Tensor, cond_BD: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, cache: KVCache | None = None,
                valid_Bl: torch.Tensor | None = None, mod_B16C: torch.Tensor | None = None) -> torch.Tensor:
        """Run the block; pass the condition (training: the AdaLN projection then runs inside `forward`, so FSDP can
        wrap whole blocks) or precomputed modulations (sampling: computed once per call, reused at every scale)."""
        if mod_B16C is None:
            if cond_BD is None:
                raise ValueError("AdaLNBlock needs cond_BD or mod_B16C")
            mod_B16C = self.modulation(cond_BD)
        gamma1, gamma2, scale1, scale2, shift1, shift2 = mod_B16C.unbind(2)
        h = self.ln_wo_grad(x_BlC).mul(scale1.add(1)).add_(shift1)
        x_BlC = x_BlC + self.drop_path(self.attn(h, attn_mask, cache, valid_Bl).mul_(gamma1))
        h = self.ln_wo_grad(x_BlC).mul(scale2.add(1)).add_(shift2)
        return x_BlC + self.drop_path(self.ffn(h).mul(gamma2))


class AdaLNBeforeHead(nn.Module):
    """LN(x) * (1 + scale) + shift, (scale, shift) from the raw class embedding (this order, docs/REFERENCES.md B1)."""

    def __init__(self, embed_dim: int, cond_dim: int, norm_eps: float = 1e-6):
        super().__init__()
        self.C = embed_dim
        self.ln_wo_grad = nn.LayerNorm(embed_dim, eps=norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(inplace=False), nn.Linear(cond_dim, 2 * embed_dim))

    def forward(self, x_BLC: torch.Tensor, cond_BD: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(cond_BD).view(-1, 1, 2, self.C).unbind(2)
        return self.ln_wo_grad(x_BLC).mul(scale.add(1)).add_(shift)
