"""Convolutional building blocks of the VQVAE encoder/decoder (FoundationVision/VAR `models/basic_vae.py`).

Module and attribute names (`norm1`, `conv1`, `nin_shortcut`, `qkv`, `proj_out`, ...) are the state-dict key names
of the released `vae_ch160v4096z32.pth`; renaming any of them breaks checkpoint loading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, eps 1e-6 and affine parameters, as used everywhere in the VQVAE."""
    if channels % GROUP_NORM_GROUPS != 0:
        raise ValueError(f"VQVAE channel counts must be multiples of {GROUP_NORM_GROUPS}, got {channels}")
    return nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, num_channels=channels, eps=GROUP_NORM_EPS, affine=True)


class ResBlock(nn.Module):
    """Pre-activation residual block: conv3x3(SiLU(GN(x))) twice, plus a 1x1 shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        # Identity when dropout is (numerically) zero, as in the release: no module state either way.
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        # The `nin_shortcut` keys exist only in channel-changing blocks (docs/REFERENCES.md B10).
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        # SiLU in place on the fresh GroupNorm outputs (FoundationVision/VAR, models/basic_vae.py,
        # ResnetBlock.forward): one full-size tensor less per activation, same values; GroupNorm's backward needs
        # its input, not its output, so gradients are unchanged too.
        h_BChw = self.conv1(F.silu(self.norm1(x_BChw), inplace=True))
        h_BChw = self.conv2(self.dropout(F.silu(self.norm2(h_BChw), inplace=True)))
        return self.nin_shortcut(x_BChw) + h_BChw


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with one fused 1x1 `qkv` conv (docs/REFERENCES.md B10).

    Channels [0:C] of the qkv output are q, [C:2C] k, [2C:3C] v; logits are scaled by C^-1/2.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x_BChw.shape
        qkv_B3CL = self.qkv(self.norm(x_BChw)).reshape(B, 3, C, H * W)
        # (B, 1 head, HW, C) layout for SDPA; its default scale is C^-1/2, the official w_ratio.
        q_B1LC, k_B1LC, v_B1LC = (t.transpose(1, 2).unsqueeze(1) for t in qkv_B3CL.unbind(1))
        h_B1LC = F.scaled_dot_product_attention(q_B1LC, k_B1LC, v_B1LC)
        h_BChw = h_B1LC.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x_BChw + self.proj_out(h_BChw)


class Downsample2x(nn.Module):
    """Stride-2 3x3 conv after zero-padding one pixel on the right and bottom only (docs/REFERENCES.md B10)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        # Asymmetric padding (left, right, top, bottom) = (0, 1, 0, 1), inherited from latent-diffusion.
        return self.conv(F.pad(x_BChw, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample2x(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_BChw, scale_factor=2.0, mode="nearest"))
