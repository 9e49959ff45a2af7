"""Multi-scale residual vector quantiser of the VAR tokenizer ([VAR §3.2] Algorithms 1-2; FoundationVision/VAR
`models/quant.py`, `VectorQuantizer2`).

Layout suffixes: B batch, Cv (written C in shapes below) VQ channels = `Cvae`, h/w spatial size of a token map,
H/W the latent size (= last patch size), l tokens of one scale, L tokens of all scales, V vocabulary, K scales.

A scale k of side p_k contributes u_k = Phi_j(k)(bicubic_up(E[idx_k], H)) to the latent reconstruction f_hat; the
last scale is never resampled. All arithmetic runs in float32 with autocast disabled: token indices must not depend
on the ambient precision (nearest-code ties, docs/REFERENCES.md#golden-vectors).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
from torch import nn

PatchSize = int | tuple[int, int]

# Rows of the (N x V) distance matrix computed at once: bounds the temporary to 2^24 floats (64 MiB).
_DISTANCE_CHUNK_ELEMENTS = 1 << 24


@functools.cache
def phi_index(k: int, num_scales: int, num_convs: int) -> int:
    """Index of the Phi conv used at scale `k` of a `num_scales` pyramid when `num_convs` convs are shared.

    Reproduces the official float64 rule exactly (official `PhiPartiallyShared`, docs/REFERENCES.md B8):
    t = k / (K - 1) as a Python float, ticks = numpy.linspace(1/3/m, 1 - 1/3/m, m) for m == 4 else
    linspace(1/2/m, 1 - 1/2/m, m), first argmin of |ticks - t|.
    Several t are mathematically equidistant from two ticks (K = 10: scales 2 and 7; t = 0.5); only this exact
    arithmetic resolves them like the release (0,0,1,1,1,2,2,3,3,3 for K = 10, m = 4).
    """
    if num_scales < 2:
        raise ValueError(f"a multi-scale pyramid needs at least 2 scales, got {num_scales}")
    if not 0 <= k < num_scales:
        raise ValueError(f"scale index {k} out of range for {num_scales} scales")
    m = num_convs
    # Written as 1/3/m (not 1/(3m)) on purpose: the same float operations as the release.
    ticks = np.linspace(1 / 3 / m, 1 - 1 / 3 / m, m) if m == 4 else np.linspace(1 / 2 / m, 1 - 1 / 2 / m, m)
    return int(np.argmin(np.abs(ticks - k / (num_scales - 1))))


class Phi(nn.Conv2d):
    """Phi(h) = (1 - r) h + r conv3x3(h): the refinement applied to every upsampled scale (docs/REFERENCES.md B8).

    Subclasses Conv2d so that the checkpoint keys are `<...>.weight` / `<...>.bias` with no extra level.
    """

    def __init__(self, Cvae: int, quant_resi: float) -> None:
        super().__init__(Cvae, Cvae, kernel_size=3, stride=1, padding=1)
        self.resi_ratio = abs(quant_resi)

    def forward(self, h_BChw: torch.Tensor) -> torch.Tensor:
        return h_BChw.mul(1 - self.resi_ratio) + super().forward(h_BChw).mul(self.resi_ratio)


class PhiConvs(nn.Module):
    """The set of Phi convs under one of the three official sharing layouts (`share_quant_resi`).

    * 0: one conv per scale (or `default_qresi_counts`), keys `quant_resi.{i}`;
    * 1: a single conv, key `quant_resi.qresi`;
    * m >= 2: m convs, keys `quant_resi.qresi_ls.{j}`, the release (m = 4).
    With |quant_resi| <= 1e-6 every Phi is an identity and has no keys.
    """

    def __init__(
        self, Cvae: int, quant_resi: float, share_quant_resi: int, num_scales: int, default_qresi_counts: int = 0
    ) -> None:
        super().__init__()
        if share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")
        self.share_quant_resi = share_quant_resi

        def make() -> nn.Module:
            return Phi(Cvae, quant_resi) if abs(quant_resi) > 1e-6 else nn.Identity()

        if share_quant_resi == 0:
            for i in range(default_qresi_counts or num_scales):
                self.add_module(str(i), make())
        elif share_quant_resi == 1:
            self.qresi = make()
        else:
            self.qresi_ls = nn.ModuleList([make() for _ in range(share_quant_resi)])

    def convs(self) -> list[nn.Module]:
        """The distinct Phi modules, in key order."""
        if self.share_quant_resi == 0:
            return list(self.children())
        if self.share_quant_resi == 1:
            return [self.qresi]
        return list(self.qresi_ls)

    def for_scale(self, k: int, num_scales: int) -> nn.Module:
        """The Phi module applied at scale `k` of a `num_scales` pyramid."""
        convs = self.convs()
        return convs[phi_index(k, num_scales, len(convs))]


def _fp32_context(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast for the quantiser arithmetic (indices must not depend on AMP, docs/REFERENCES.md B19)."""
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _hw(patch: PatchSize) -> tuple[int, int]:
    return (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))


class MultiScaleResidualQuantizer(nn.Module):
    """Multi-scale residual VQ (the official `VectorQuantizer2`); attribute name `quantize` inside the VQVAE.

    Submodule registration order (`quant_resi` before `embedding`) reproduces the released state-dict order.
    """

    def __init__(
        self,
        vocab_size: int,
        Cvae: int,
        patch_nums: Sequence[int],
        quant_resi: float = 0.5,
        share_quant_resi: int = 4,
        beta: float = 0.25,
        using_znorm: bool = False,
        default_qresi_counts: int = 0,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.Cvae = Cvae
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.beta = beta
        self.using_znorm = using_znorm
        self.quant_resi = PhiConvs(Cvae, quant_resi, share_quant_resi, len(self.patch_nums), default_qresi_counts)
        self.embedding = nn.Embedding(vocab_size, Cvae)
        nn.init.uniform_(self.embedding.weight, -1.0 / vocab_size, 1.0 / vocab_size)
        # Per-scale EMA of code hits, only a training statistic (never affects outputs). Persistent because the
        # released file contains it (docs/REFERENCES.md B13). K x V float32.
        self.register_buffer("ema_vocab_hit_SV", torch.zeros(len(self.patch_nums), vocab_size, dtype=torch.float32))
        # Number of EMA updates so far; not checkpointed (official `record_hit` is a plain attribute too).
        self.record_hit = 0

    @torch.no_grad()
    def reset_constant_buffers(self) -> None:
        """Codebook usage counters start at zero (after building without initialisation)."""
        self.ema_vocab_hit_SV.zero_()

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def num_scales(self) -> int:
        """K, the number of scales of the model's own pyramid."""
        return len(self.patch_nums)

    def nearest_code(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook entry of every row of `z_NC` (N x C) -> (N,) int64.

        Squared L2 as ||z||^2 + ||e||^2 - 2 z.e in float32 (first minimum on ties), computed as a chunked addmm so
        the N x V matrix never exceeds 64 MiB; with `using_znorm`, argmax of cosine similarity instead.
        """
        z_NC = z_NC.detach().float()
        E_VC = self.embedding.weight.detach().float()
        N = z_NC.shape[0]
        idx_N = torch.empty(N, dtype=torch.long, device=z_NC.device)
        chunk = max(1, _DISTANCE_CHUNK_ELEMENTS // self.vocab_size)
        with _fp32_context(z_NC.device):
            if self.using_znorm:
                En_CV = F.normalize(E_VC, dim=1).T
                for s in range(0, N, chunk):
                    idx_N[s : s + chunk] = torch.argmax(F.normalize(z_NC[s : s + chunk], dim=1) @ En_CV, dim=1)
                return idx_N
            e2_V = E_VC.square().sum(dim=1)
            for s in range(0, N, chunk):
                z_nC = z_NC[s : s + chunk]
                d_nV = torch.addmm(z_nC.square().sum(dim=1, keepdim=True) + e2_V, z_nC, E_VC.T, beta=1, alpha=-2)
                idx_N[s : s + chunk] = torch.argmin(d_nV, dim=1)
        return idx_N

    def embed(self, idx_Bl: torch.Tensor, patch: PatchSize | None = None) -> torch.Tensor:
        """Codebook vectors of a token map, (B, l) -> (B, C, h, w) with row-major token order."""
        B, num_tokens = idx_Bl.shape
        # Square maps are inferred from the token count (p = round(sqrt(l)), as the official `idxBl_to_img`).
        h, w = _hw(patch) if patch is not None else (round(num_tokens**0.5),) * 2
        return self.embedding(idx_Bl).transpose(1, 2).reshape(B, self.Cvae, h, w)

    def phi(self, k: int, h_BChw: torch.Tensor, num_scales: int | None = None) -> torch.Tensor:
        """Contribution u_k of scale `k` to f_hat: Phi_j(k)(bicubic_up(h)) (no resampling at the last scale).

        `h_BChw` is any float code map of the scale (E[idx], or codes weighted per token as in DepthVAR); the
        output has the latent size H x W = patch_nums[-1]. `num_scales` (default: the model's K) selects the Phi.
        """
        H = self.patch_nums[-1]
        return self._phi_up(k, self.num_scales if num_scales is None else num_scales, h_BChw, (H, H))

    def _phi_up(self, k: int, K: int, h_BChw: torch.Tensor, size_HW: tuple[int, int]) -> torch.Tensor:
        with _fp32_context(h_BChw.device):
            h_BChw = h_BChw.float()
            if k != K - 1:  # the last scale is never resampled, whatever its size (docs/REFERENCES.md B7)
                h_BChw = F.interpolate(h_BChw, size=size_HW, mode="bicubic", align_corners=False)
            return self.quant_resi.for_scale(k, K)(h_BChw)

    # ------------------------------------------------------------------------------------------ tokenisation
    def f_to_idxBl_or_fhat(
        self, f_BChw: torch.Tensor, to_fhat: bool, v_patch_nums: Sequence[PatchSize] | None = None
    ) -> list[torch.Tensor]:
        """Residual quantisation of a latent (official `f_to_idxBl_or_fhat`, [VAR §3.2] Algorithm 1).

        Returns the K token maps [(B, h_k * w_k) int64] or, with `to_fhat`, the cumulative f_hat after each scale
        [(B, C, H, W)]. `v_patch_nums` (ints or (h, w)) overrides the pyramid; its last entry must be the latent size.
        """
        B, C, H, W = f_BChw.shape
        patch_hws = [_hw(p) for p in (v_patch_nums if v_patch_nums is not None else self.patch_nums)]
        if patch_hws[-1] != (H, W):
            raise ValueError(f"last patch size {patch_hws[-1]} must equal the latent size {(H, W)}")
        K = len(patch_hws)
        out: list[torch.Tensor] = []
        # Gradients can only reach f_hat (through the codebook and Phi, as in the release); the residual that
        # drives the discrete search is kept detached, and the index path needs no graph at all.
        with torch.set_grad_enabled(to_fhat and torch.is_grad_enabled()), _fp32_context(f_BChw.device):
            f_rest_BChw = f_BChw.detach().float()
            f_hat_BChw = torch.zeros_like(f_rest_BChw)
            for k, (ph, pw) in enumerate(patch_hws):
                z_BChw = f_rest_BChw if k == K - 1 else F.interpolate(f_rest_BChw, size=(ph, pw), mode="area")
                idx_N = self.nearest_code(z_BChw.permute(0, 2, 3, 1).reshape(-1, C))
                u_BChw = self._phi_up(k, K, self.embed(idx_N.view(B, ph * pw), (ph, pw)), (H, W))
                f_hat_BChw = f_hat_BChw + u_BChw
                f_rest_BChw = f_rest_BChw - u_BChw.detach()
                out.append(f_hat_BChw if to_fhat else idx_N.view(B, ph * pw))
        return out

    def idxBl_to_var_input(self, gt_ms_idx_Bl: Sequence[torch.Tensor]) -> torch.Tensor:
        """Teacher-forcing input of VAR: (B, L - first_l, C) (official `idxBl_to_var_input`, docs/REFERENCES.md B7).

        The input for scale k+1 is the cumulative f_hat of scales 0..k area-downsampled to p_{k+1}, flattened
        row-major; the last scale's tokens are never part of it. Always uses the model's own pyramid.
        """
        B = gt_ms_idx_Bl[0].shape[0]
        K, H = self.num_scales, self.patch_nums[-1]
        next_scales: list[torch.Tensor] = []
        with _fp32_context(gt_ms_idx_Bl[0].device):
            f_hat_BChw = torch.zeros(B, self.Cvae, H, H, dtype=torch.float32, device=gt_ms_idx_Bl[0].device)
            for k in range(K - 1):
                f_hat_BChw = f_hat_BChw + self.phi(k, self.embed(gt_ms_idx_Bl[k], self.patch_nums[k]))
                pn_next = self.patch_nums[k + 1]
                next_BChw = F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")
                next_scales.append(next_BChw.flatten(2).transpose(1, 2))
        return torch.cat(next_scales, dim=1)

    def get_next_autoregressive_input(
        self, k: int, K: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampler update after scale `k` of `K`: f_hat += phi(k, h), updated in place (as the release).

        Returns (f_hat, next input map area-downsampled to p_{k+1}), or (f_hat, f_hat) at the last scale.
        """
        f_hat_BChw.add_(self.phi(k, h_BChw, num_scales=K))
        if k == K - 1:
            return f_hat_BChw, f_hat_BChw
        pn_next = self.patch_nums[k + 1]
        with _fp32_context(f_hat_BChw.device):
            return f_hat_BChw, F.interpolate(f_hat_BChw, size=(pn_next, pn_next), mode="area")

    def embed_to_fhat(
        self, ms_h_BChw: Sequence[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False
    ) -> list[torch.Tensor] | torch.Tensor:
        """Accumulate per-scale code maps into f_hat: the final one (`last_one`) or the list of partial sums.

        With `all_to_max_scale` (the normal case) every scale is upsampled to H x W before Phi. The other branch
        (f_hat progressively upsampled from scale to scale) is the release's experimental path, kept for parity;
        its partial sums have the size of their scale.
        """
        B, K, H = ms_h_BChw[0].shape[0], self.num_scales, self.patch_nums[-1]
        device = ms_h_BChw[0].device
        f_hats: list[torch.Tensor] = []
        with _fp32_context(device):
            if all_to_max_scale:
                f_hat_BChw = torch.zeros(B, self.Cvae, H, H, dtype=torch.float32, device=device)
                for k in range(K):
                    f_hat_BChw = f_hat_BChw + self.phi(k, ms_h_BChw[k])
                    f_hats.append(f_hat_BChw)
            else:
                p0 = self.patch_nums[0]
                f_hat_BChw = torch.zeros(B, self.Cvae, p0, p0, dtype=torch.float32, device=device)
                for k, pn in enumerate(self.patch_nums):
                    f_hat_BChw = F.interpolate(f_hat_BChw, size=(pn, pn), mode="bicubic", align_corners=False)
                    f_hat_BChw = f_hat_BChw + self.quant_resi.for_scale(k, K)(ms_h_BChw[k].float())
                    f_hats.append(f_hat_BChw)
        return f_hats[-1] if last_one else f_hats

    # ------------------------------------------------------------------------------------------ training
    def forward(self, f_BChw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenizer-training quantisation (the official `VectorQuantizer2.forward`, docs/REFERENCES.md B19).

        Returns (f_hat with a straight-through gradient to `f_BChw`, vq loss, usage_K). The loss averages over
        scales beta * MSE(f_hat.detach(), f) (commitment, trains the encoder) + MSE(f_hat, f.detach()) (trains the
        codebook and the Phi convs). usage_K is, per scale, the percentage of codes whose EMA hit count reaches
        8 % of a uniform share; unlike the release (distributed-only), the EMA is updated in every training call,
        with hit counts all-reduced when torch.distributed is initialised.
        """
        B, C, H, W = f_BChw.shape
        K = self.num_scales
        if (H, W) != (self.patch_nums[-1],) * 2:
            raise ValueError(f"latent size {(H, W)} does not match the last patch size {self.patch_nums[-1]}")
        distributed = tdist.is_available() and tdist.is_initialized()
        with _fp32_context(f_BChw.device):
            f_BChw = f_BChw.float()
            f_no_grad_BChw = f_BChw.detach()
            f_rest_BChw = f_no_grad_BChw.clone()
            f_hat_BChw = torch.zeros_like(f_rest_BChw)
            vq_loss = f_BChw.new_zeros(())
            for k, pn in enumerate(self.patch_nums):
                z_BChw = f_rest_BChw if k == K - 1 else F.interpolate(f_rest_BChw, size=(pn, pn), mode="area")
                idx_N = self.nearest_code(z_BChw.permute(0, 2, 3, 1).reshape(-1, C))
                if self.training:
                    self._update_usage(k, idx_N, distributed)
                # Gradient reaches the codebook and Phi through u (not through the discrete argmin).
                u_BChw = self.phi(k, self.embed(idx_N.view(B, pn * pn), pn))
                f_hat_BChw = f_hat_BChw + u_BChw
                f_rest_BChw = f_rest_BChw - u_BChw.detach()
                vq_loss = (
                    vq_loss
                    + F.mse_loss(f_hat_BChw.detach(), f_BChw).mul(self.beta)
                    + F.mse_loss(f_hat_BChw, f_no_grad_BChw)
                )
            vq_loss = vq_loss / K
            f_hat_ste_BChw = (f_hat_BChw.detach() - f_no_grad_BChw) + f_BChw
        world = tdist.get_world_size() if distributed else 1
        margin = world * (B * H * W) / self.vocab_size * 0.08
        usage_K = (self.ema_vocab_hit_SV >= margin).float().mean(dim=1) * 100
        return f_hat_ste_BChw, vq_loss, usage_K

    @torch.no_grad()
    def _update_usage(self, k: int, idx_N: torch.Tensor, distributed: bool) -> None:
        hit_V = idx_N.bincount(minlength=self.vocab_size).float()
        if distributed:
            tdist.all_reduce(hit_V)
        # Same EMA schedule as the release: copy, then momentum 0.9 for 100 updates, then 0.99.
        if self.record_hit == 0:
            self.ema_vocab_hit_SV[k].copy_(hit_V)
        elif self.record_hit < 100:
            self.ema_vocab_hit_SV[k].mul_(0.9).add_(hit_V.mul(0.1))
        else:
            self.ema_vocab_hit_SV[k].mul_(0.99).add_(hit_V.mul(0.01))
        self.record_hit += 1
