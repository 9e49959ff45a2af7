"""The VAR tokenizer: a multi-scale residual VQVAE, checkpoint-compatible with `vae_ch160v4096z32.pth`.

Architecture and operations follow FoundationVision/VAR `models/vqvae.py`, `basic_vae.py` and `quant.py`; module
attribute names are the released state-dict keys (`encoder.*`, `decoder.*`, `quantize.*`, `quant_conv`,
`post_quant_conv`, in that order). Images are B x 3 x H x W in
[-1, 1] with H = W = downsample * patch_nums[-1] (16x for the release); latents are B x Cvae x h x w with
h = w = patch_nums[-1].

Unlike the release, construction has no side effects: no process-wide `reset_parameters` patching (docs/REFERENCES.md
B12) and no implicit freezing (`test_mode`); call `freeze()` for a frozen tokenizer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from varianttrain.models.quant import MultiScaleResidualQuantizer, PatchSize
from varianttrain.models.vae_blocks import AttnBlock, Downsample2x, ResBlock, Upsample2x, group_norm

# Fixed inside the official VQVAE class, not constructor arguments (FoundationVision/VAR `models/vqvae.py`).
CH_MULT = (1, 1, 2, 2, 4)
NUM_RES_BLOCKS = 2
IN_CHANNELS = 3


@dataclass(frozen=True)
class VQVAEConfig:
    """Hyperparameters of the VQVAE; defaults are the released `vae_ch160v4096z32.pth` (official `build_vae_var`)."""

    vocab_size: int = 4096  # V, codebook entries
    z_channels: int = 32  # Cvae, latent / code channels
    ch: int = 160  # base width; multiple of 32 (GroupNorm groups)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # side of each scale; last = latent side
    share_quant_resi: int = 4  # Phi sharing layout: 0 per scale, 1 shared, m >= 2 partially shared
    quant_resi: float = 0.5  # r in Phi(h) = (1 - r) h + r conv(h)
    beta: float = 0.25  # commitment weight of the vq loss (training only)
    quant_conv_ks: int = 3  # kernel of quant_conv / post_quant_conv (3 in the release)
    using_znorm: bool = False  # cosine-similarity code search instead of L2 (off in the release)
    dropout: float = 0.0  # ResBlock dropout
    default_qresi_counts: int = 0  # number of Phi convs for share_quant_resi == 0 (0: one per scale)
    # Width multiplier per encoder level; fixed at (1, 1, 2, 2, 4) inside the official class (16x downsampling).
    # A shorter tuple gives a smaller downsampling factor, e.g. (1, 1, 2, 4): 8x, an 8 x 8 latent at 64 px.
    ch_mult: tuple[int, ...] = CH_MULT

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch_mult needs at least one positive multiplier, got {self.ch_mult}")
        if self.ch % 32 != 0:
            raise ValueError(f"ch must be a multiple of 32 (GroupNorm with 32 groups), got {self.ch}")
        if len(self.patch_nums) < 2:
            raise ValueError(f"patch_nums needs at least two scales, got {self.patch_nums}")

    @classmethod
    def released(cls) -> VQVAEConfig:
        """The configuration of the released `vae_ch160v4096z32.pth`."""
        return cls()

    @classmethod
    def from_official_kwargs(cls, kwargs: Mapping[str, Any]) -> VQVAEConfig:
        """Map arguments of the official `VQVAE(...)` constructor (e.g. golden `vae_build_args`) onto a config.

        `v_patch_nums` becomes `patch_nums`; `test_mode` is dropped (use `VQVAE.freeze()`); unknown keys raise.
        """
        renamed = {"v_patch_nums": "patch_nums"}
        names = {f.name for f in fields(cls)}
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key == "test_mode":
                continue
            key = renamed.get(key, key)
            if key not in names:
                raise ValueError(f"unknown VQVAE argument {key!r}")
            out[key] = value
        return cls(**out)

    @property
    def downsample(self) -> int:
        """Spatial reduction of the encoder, 2^(len(ch_mult) - 1) (16 for the release)."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        """Input resolution the pyramid is built for: downsample * patch_nums[-1] (256 for the release)."""
        return self.downsample * self.patch_nums[-1]


class _Level(nn.Module):
    """One resolution level: ResBlocks, each followed by an AttnBlock when `attn` is non-empty."""

    def __init__(self, blocks: Sequence[nn.Module], attns: Sequence[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)  # empty (no keys) except at the lowest resolution

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h_BChw = block(h_BChw)
            if len(self.attn) > 0:
                h_BChw = self.attn[i](h_BChw)
        return h_BChw


class _Mid(nn.Module):
    """Middle stage: ResBlock, self-attention, ResBlock."""

    def __init__(self, channels: int, dropout: float, using_sa: bool) -> None:
        super().__init__()
        self.block_1 = ResBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels) if using_sa else nn.Identity()
        self.block_2 = ResBlock(channels, channels, dropout)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h_BChw)))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> latent (B, z_channels, H/f, W/f), f = 2^(levels-1) (16 released), before quant_conv."""

    def __init__(
        self,
        ch: int,
        z_channels: int,
        ch_mult: Sequence[int] = CH_MULT,
        num_res_blocks: int = NUM_RES_BLOCKS,
        dropout: float = 0.0,
        in_channels: int = IN_CHANNELS,
        using_sa: bool = True,
        using_mid_sa: bool = True,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        in_ch_mult = (1, *ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        for i in range(num_levels):
            c_in, c_out = ch * in_ch_mult[i], ch * ch_mult[i]
            blocks = [ResBlock(c_in if b == 0 else c_out, c_out, dropout) for b in range(num_res_blocks)]
            lowest = i == num_levels - 1
            attns = [AttnBlock(c_out) for _ in range(num_res_blocks)] if lowest and using_sa else []
            level = _Level(blocks, attns)
            if not lowest:
                level.downsample = Downsample2x(c_out)
            self.down.append(level)
        c_mid = ch * ch_mult[-1]
        self.mid = _Mid(c_mid, dropout, using_mid_sa)
        self.norm_out = group_norm(c_mid)
        self.conv_out = nn.Conv2d(c_mid, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        h_BChw = self.conv_in(img_B3HW)
        for level in self.down:
            h_BChw = level(h_BChw)
            if hasattr(level, "downsample"):
                h_BChw = level.downsample(h_BChw)
        h_BChw = self.mid(h_BChw)
        return self.conv_out(F.silu(self.norm_out(h_BChw)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, f h, f w), unclamped, after post_quant_conv.

    `up` is indexed by resolution level (up.0 is the highest resolution) but executed from the last to up.0.
    """

    def __init__(
        self,
        ch: int,
        z_channels: int,
        ch_mult: Sequence[int] = CH_MULT,
        num_res_blocks: int = NUM_RES_BLOCKS,
        dropout: float = 0.0,
        in_channels: int = IN_CHANNELS,
        using_sa: bool = True,
        using_mid_sa: bool = True,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        c_mid = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_mid, kernel_size=3, stride=1, padding=1)
        self.mid = _Mid(c_mid, dropout, using_mid_sa)
        levels: list[_Level] = []
        c_in = c_mid
        for i in reversed(range(num_levels)):
            c_out = ch * ch_mult[i]
            blocks = [ResBlock(c_in if b == 0 else c_out, c_out, dropout) for b in range(num_res_blocks + 1)]
            lowest = i == num_levels - 1
            attns = [AttnBlock(c_out) for _ in range(num_res_blocks + 1)] if lowest and using_sa else []
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample2x(c_out)
            levels.insert(0, level)
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(c_in)
        self.conv_out = nn.Conv2d(c_in, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        h_BChw = self.mid(self.conv_in(z_BChw))
        for level in reversed(self.up):
            h_BChw = level(h_BChw)
            if hasattr(level, "upsample"):
                h_BChw = level.upsample(h_BChw)
        # In place, as in the official Decoder.forward (FoundationVision/VAR, models/basic_vae.py).
        return self.conv_out(F.silu(self.norm_out(h_BChw), inplace=True))


class VQVAE(nn.Module):
    """Multi-scale residual VQVAE (the VAR tokenizer), built from a `VQVAEConfig` (default: the release)."""

    def __init__(self, config: VQVAEConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else VQVAEConfig.released()
        self.config = cfg
        self.vocab_size = cfg.vocab_size
        self.Cvae = cfg.z_channels
        self.patch_nums = cfg.patch_nums
        self.downsample = cfg.downsample
        self.encoder = Encoder(cfg.ch, cfg.z_channels, ch_mult=cfg.ch_mult, dropout=cfg.dropout)
        self.decoder = Decoder(cfg.ch, cfg.z_channels, ch_mult=cfg.ch_mult, dropout=cfg.dropout)
        self.quantize = MultiScaleResidualQuantizer(
            vocab_size=cfg.vocab_size,
            Cvae=cfg.z_channels,
            patch_nums=cfg.patch_nums,
            quant_resi=cfg.quant_resi,
            share_quant_resi=cfg.share_quant_resi,
            beta=cfg.beta,
            using_znorm=cfg.using_znorm,
            default_qresi_counts=cfg.default_qresi_counts,
        )
        ks = cfg.quant_conv_ks
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, kernel_size=ks, stride=1, padding=ks // 2)
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, kernel_size=ks, stride=1, padding=ks // 2)

    def freeze(self) -> VQVAE:
        """Eval mode and no gradients (the official `test_mode=True`), for use as a fixed tokenizer."""
        self.eval()
        self.requires_grad_(False)
        return self

    # ------------------------------------------------------------------------------------------ training
    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenizer-training forward (the official `VQVAE.forward`, docs/REFERENCES.md B19).

        Returns (recon_img_B3HW, vq_loss, usage_K): the reconstruction is *not* clamped (so the reconstruction
        loss keeps gradients at the range bounds) and reaches the encoder through the straight-through f_hat;
        the trainer adds its reconstruction loss to `vq_loss`. usage_K: per-scale codebook usage in percent.
        """
        f_hat_BChw, vq_loss, usage_K = self.quantize(self.encode_latent(img_B3HW))
        return self.decoder(self.post_quant_conv(f_hat_BChw)), vq_loss, usage_K

    # ------------------------------------------------------------------------------------------ inference
    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """f = quant_conv(encoder(img)): (B, 3, H, W) in [-1, 1] -> (B, Cvae, H/16, W/16)."""
        return self.quant_conv(self.encoder(img_B3HW))

    @torch.no_grad()
    def img_to_idxBl(
        self, img_B3HW: torch.Tensor, v_patch_nums: Sequence[PatchSize] | None = None
    ) -> list[torch.Tensor]:
        """Tokenise images: list of K int64 token maps (B, p_k^2), row-major within a scale."""
        return self.quantize.f_to_idxBl_or_fhat(self.encode_latent(img_B3HW), to_fhat=False, v_patch_nums=v_patch_nums)

    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """Decode a latent reconstruction: clamp(decoder(post_quant_conv(f_hat)), -1, 1) (docs/REFERENCES.md B11)."""
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp(-1, 1)

    def embed_to_img(
        self, ms_h_BChw: Sequence[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Decode per-scale code maps: the final image (`last_one`) or one image per partial sum of scales."""
        f_hat = self.quantize.embed_to_fhat(ms_h_BChw, all_to_max_scale=all_to_max_scale, last_one=last_one)
        if last_one:
            return self.fhat_to_img(f_hat)
        return [self.fhat_to_img(f_hat_BChw) for f_hat_BChw in f_hat]

    def idxBl_to_img(
        self, ms_idx_Bl: Sequence[torch.Tensor], same_shape: bool = True, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Decode token maps (square scales, p_k = round(sqrt(l_k))) to images in [-1, 1].

        `last_one`: only the full reconstruction (B, 3, H, W); else a list with the image after each scale.
        `same_shape=False` selects the release's experimental progressive-upsampling path.
        """
        ms_h_BChw = [self.quantize.embed(idx_Bl) for idx_Bl in ms_idx_Bl]
        return self.embed_to_img(ms_h_BChw, all_to_max_scale=same_shape, last_one=last_one)

    def img_to_reconstructed_img(
        self, img_B3HW: torch.Tensor, v_patch_nums: Sequence[PatchSize] | None = None, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Encode, quantise and decode: the final reconstruction (`last_one`) or one image per scale."""
        ls_f_hat_BChw = self.quantize.f_to_idxBl_or_fhat(
            self.encode_latent(img_B3HW), to_fhat=True, v_patch_nums=v_patch_nums
        )
        if last_one:
            return self.fhat_to_img(ls_f_hat_BChw[-1])
        return [self.fhat_to_img(f_hat_BChw) for f_hat_BChw in ls_f_hat_BChw]

    # ------------------------------------------------------------------------------------------ checkpoints
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load a state dict; an `ema_vocab_hit_SV` with another number of scales is replaced by our own buffer.

        As in the release: the buffer is a K x V codebook-usage statistic that never influences outputs, and its
        first dimension is the number of scales, so without this a tokenizer built for another pyramid (e.g. the
        4-scale test model or a 512 px pyramid) could not load the 10-scale `vae_ch160v4096z32.pth` strictly.
        The caller's mapping is not modified.
        """
        key = "quantize.ema_vocab_hit_SV"
        own = self.quantize.ema_vocab_hit_SV
        if key in state_dict and state_dict[key].shape[0] != own.shape[0]:
            metadata = getattr(state_dict, "_metadata", None)  # module versions, kept as torch itself does
            state_dict = OrderedDict(state_dict)
            state_dict[key] = own.detach().clone()
            if metadata is not None:
                state_dict._metadata = metadata
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
