"""Demo training task `tokenizer`: the multi-scale residual VQVAE (VAR's tokenizer) trained from scratch.

Used for the built-in demo (a small VQVAE on the 64 x 64 shapes dataset, docs/DEMO_MODELS.md); the released 256 px
tokenizer is never retrained. The objective is reconstruction + the quantiser's own vq loss (docs/REFERENCES.md B19):

    loss = l1_weight * |x_rec - x| + l2_weight * (x_rec - x)^2 + gradient_weight * |grad x_rec - grad x|
           + vq_weight * vq_loss

with no perceptual or adversarial term (those need pretrained networks, which the demo cannot download). The edge
term compares finite differences of the images; it sharpens the outlines that a pure L1/L2 objective blurs.

Codebook collapse and dead-code restart: the quantiser initialises its codebook uniformly in +-1/V, far smaller
than the encoder's outputs, so at the start every query's nearest code is one of the few entries closest to the
origin; only those entries receive gradient (the vq loss moves only the selected rows), and the rest of the
codebook stays unused for the whole run ("codebook collapse"; small models and small vocabularies suffer most).
With `restart_dead_codes`, every `restart_every` optimizer steps each code selected fewer than `restart_min_hits`
times (summed over all scales since the previous restart) is re-initialised to a randomly chosen *query* of the
latest batch, i.e. a residual the quantiser actually had to encode at some scale, so the code is immediately in
use (the k-means "empty cluster" fix, as in Jukebox / SoundStream). Under DDP the hit counts are summed over ranks
and the new codes are broadcast from rank 0, so every rank keeps the same codebook.

Shape suffixes as in `varianttrain.models.quant`: B batch, C (= Cvae) code channels, h/w latent side, V vocabulary,
K scales, N query rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as tdist
import torch.nn.functional as F

from varianttrain.checkpoints import save_vqvae_export
from varianttrain.config_io import ensure_config, to_dict
from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.training.optim import adamw_warmup_cosine, check_adamw_settings

__all__ = [
    "TokenizerModule",
    "TokenizerTaskConfig",
    "build_tokenizer_module",
    "reconstruction_psnr",
]

_RESERVOIR_ROWS = 16384  # at most this many latest-batch queries are kept as restart candidates


@dataclass(frozen=True)
class TokenizerTaskConfig:
    """Everything the `tokenizer` task needs besides data and trainer settings (`task:` group of a run config).

    The first block mirrors `VQVAEConfig`; defaults are the demo tokenizer (64 x 64 images, patch_nums ending at
    64 / 16 = 4). Images must be downsample * patch_nums[-1] pixels square (data.resolution), downsample =
    2^(len(ch_mult) - 1).
    """

    # --- VQVAE architecture (the official `VQVAE` arguments) ---
    vocab_size: int = 512  # V, codebook entries shared by all scales
    z_channels: int = 32  # Cvae, latent / code channels
    ch: int = 32  # base width of encoder/decoder; multiple of 32 (GroupNorm groups)
    patch_nums: tuple[int, ...] = (1, 2, 3, 4)  # token-map side per scale; downsample * last = image side
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width per encoder level; 2^(len - 1) = downsample (release: 16)
    beta: float = 0.25  # commitment weight inside the vq loss
    quant_resi: float = 0.5  # r of Phi(h) = (1 - r) h + r conv(h)
    share_quant_resi: int = 4  # Phi sharing layout: 0 per scale, 1 shared, m >= 2 partially shared (release: 4)
    # --- optimisation (AdamW; linear warmup, then cosine decay to min_lr_ratio * lr over trainer.max_steps) ---
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0  # applied to conv/linear weights only (never to norms, biases or the codebook)
    warmup_steps: int = 100  # optimizer steps of linear warmup
    min_lr_ratio: float = 0.1  # final lr / lr of the cosine decay (no decay when trainer.max_steps is unset)
    # --- loss weights ---
    l1_weight: float = 1.0  # mean absolute error on [-1, 1] images
    l2_weight: float = 1.0  # mean squared error on [-1, 1] images
    vq_weight: float = 1.0  # the quantiser's codebook + commitment loss
    gradient_weight: float = 0.5  # L1 between finite-difference image gradients (edge sharpness)
    # --- codebook dead-code restart (module docstring) ---
    restart_dead_codes: bool = True
    restart_every: int = 100  # optimizer steps between restarts (and length of the hit-count window)
    restart_min_hits: int = 1  # codes selected fewer times than this in a window are restarted
    # --- misc ---
    grid_images: int = 8  # validation images shown (with their reconstructions) in the logged image grid
    seed: int = 0  # model initialisation and restart sampling (data order is seeded by the data config)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        self.vqvae_config()  # raises ValueError for an invalid architecture (e.g. ch not a multiple of 32)
        if self.vocab_size < 2 or self.z_channels < 1:
            raise ValueError(f"vocab_size must be >= 2 and z_channels >= 1, got {self.vocab_size}, {self.z_channels}")
        if list(self.patch_nums) != sorted(set(self.patch_nums)) or self.patch_nums[0] < 1:
            raise ValueError(f"patch_nums must be strictly increasing positive sides, got {self.patch_nums}")
        check_adamw_settings(self.lr, self.betas, self.weight_decay, self.warmup_steps, self.min_lr_ratio)
        weights = {"l1_weight": self.l1_weight, "l2_weight": self.l2_weight, "vq_weight": self.vq_weight,
                   "gradient_weight": self.gradient_weight}
        negative = [name for name, w in weights.items() if w < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {negative}")
        if self.l1_weight + self.l2_weight + self.gradient_weight == 0:
            raise ValueError("at least one reconstruction weight (l1, l2, gradient) must be positive")
        if self.restart_every < 1 or self.restart_min_hits < 1:
            raise ValueError(f"restart_every and restart_min_hits must be >= 1, got {self.restart_every}, "
                             f"{self.restart_min_hits}")
        if self.grid_images < 0:
            raise ValueError(f"grid_images must be >= 0, got {self.grid_images}")

    def vqvae_config(self) -> VQVAEConfig:
        """The `VQVAEConfig` of the trained tokenizer (the other VQVAE fields keep the release's values)."""
        return VQVAEConfig(vocab_size=self.vocab_size, z_channels=self.z_channels, ch=self.ch,
                           patch_nums=self.patch_nums, beta=self.beta, quant_resi=self.quant_resi,
                           share_quant_resi=self.share_quant_resi, ch_mult=self.ch_mult)

    @property
    def image_size(self) -> int:
        """Side of the training images: downsample * patch_nums[-1]."""
        return self.vqvae_config().image_size


def reconstruction_psnr(recon_B3HW: torch.Tensor, img_B3HW: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images, measured on the [0, 1] scale after clamping the reconstruction."""
    mse_B = ((recon_B3HW.detach().float().clamp(-1, 1) - img_B3HW.float()) / 2).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse_B.clamp_min(1e-10))


def _gradient_l1(recon_B3HW: torch.Tensor, img_B3HW: torch.Tensor) -> torch.Tensor:
    """Mean |d recon - d img| over horizontal and vertical neighbour differences."""
    dx = (recon_B3HW.diff(dim=-1) - img_B3HW.diff(dim=-1)).abs().mean()
    dy = (recon_B3HW.diff(dim=-2) - img_B3HW.diff(dim=-2)).abs().mean()
    return (dx + dy) / 2


class TokenizerModule(L.LightningModule):
    """Trains a `VQVAE` (attribute `vqvae`, so Lightning checkpoints hold it under `vqvae.*`) on images in [-1, 1].

    Batches are `(img_B3HW, label_B)`; labels are ignored. Logged: `train/loss`, `train/l1`, `train/l2`,
    `train/psnr`, `train/vq_loss`, `train/usage_s{k}` (percent of the codebook in use at scale k, the quantiser's
    EMA statistic), `train/perplexity_s{k}` (exp of the entropy of the batch's code histogram at scale k),
    `train/restarted_codes` (cumulative), and `val/loss`, `val/l1`, `val/l2`, `val/psnr`, `val/vq_loss`; the first
    validation batch is logged as an image grid `val/reconstructions` (originals in the top row, reconstructions
    below) to every logger that has `add_image` (TensorBoard) and kept in `val_grid`.
    """

    def __init__(self, task_cfg: TokenizerTaskConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.task_cfg = ensure_config(TokenizerTaskConfig, task_cfg)
        # A plain dict, so that checkpoints load with weights_only=True and `load_from_checkpoint` rebuilds the module.
        self.save_hyperparameters({"task_cfg": to_dict(self.task_cfg)})
        # Initialisation depends on the task seed only, and leaves the global RNG as the caller had it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.task_cfg.seed)
            self.vqvae = VQVAE(self.task_cfg.vqvae_config())
        V = self.task_cfg.vocab_size
        # Hits per code since the last restart, summed over scales (not checkpointed: a resumed run starts a window).
        self.register_buffer("code_hits_V", torch.zeros(V, dtype=torch.float64), persistent=False)
        self._reservoir_NC: torch.Tensor | None = None  # the latest batch's quantiser queries (restart candidates)
        self._last_restart_step = 0
        self.restarted_codes = 0
        self.val_grid: torch.Tensor | None = None  # (3, H', W') in [0, 1], the latest validation grid

    # ------------------------------------------------------------------------------------------------ forward
    def forward(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training forward of the VQVAE (`VQVAE.forward`, unrolled to keep the latent).

        Returns (recon_B3HW unclamped, vq_loss, usage_K, f_BChw the pre-quantisation latent).
        """
        side = self.task_cfg.image_size
        if tuple(img_B3HW.shape[-2:]) != (side, side):
            raise ValueError(f"the tokenizer with patch_nums {self.task_cfg.patch_nums} needs {side} x {side} images "
                             f"(downsample * patch_nums[-1]); got {tuple(img_B3HW.shape[-2:])}: "
                             f"set data.resolution={side}")
        f_BChw = self.vqvae.encode_latent(img_B3HW)
        f_hat_BChw, vq_loss, usage_K = self.vqvae.quantize(f_BChw)
        recon_B3HW = self.vqvae.decoder(self.vqvae.post_quant_conv(f_hat_BChw))
        return recon_B3HW, vq_loss, usage_K, f_BChw

    def _losses(self, img_B3HW: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor,
                                                         torch.Tensor]:
        cfg = self.task_cfg
        recon_B3HW, vq_loss, usage_K, f_BChw = self(img_B3HW)
        recon_B3HW, img_B3HW = recon_B3HW.float(), img_B3HW.float()
        l1, l2 = F.l1_loss(recon_B3HW, img_B3HW), F.mse_loss(recon_B3HW, img_B3HW)
        loss = cfg.l1_weight * l1 + cfg.l2_weight * l2 + cfg.vq_weight * vq_loss
        terms = {"l1": l1.detach(), "l2": l2.detach(), "vq_loss": vq_loss.detach()}
        if cfg.gradient_weight > 0:
            grad = _gradient_l1(recon_B3HW, img_B3HW)
            loss = loss + cfg.gradient_weight * grad
            terms["gradient"] = grad.detach()
        terms["loss"] = loss
        terms["psnr"] = reconstruction_psnr(recon_B3HW, img_B3HW).mean()
        return terms, recon_B3HW, usage_K, f_BChw

    # ---------------------------------------------------------------------------------------------- training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        img_B3HW = batch[0]
        terms, _, usage_K, f_BChw = self._losses(img_B3HW)
        B = img_B3HW.shape[0]
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name in ("loss", "psnr"), batch_size=B)
        queries_K, idx_K = self.scale_queries(f_BChw.detach())
        V = self.task_cfg.vocab_size
        for k, idx_N in enumerate(idx_K):
            hits_V = idx_N.bincount(minlength=V).double()
            self.code_hits_V += hits_V
            p_V = hits_V / hits_V.sum()
            entropy = -(p_V[p_V > 0] * p_V[p_V > 0].log()).sum()
            self.log(f"train/perplexity_s{k}", entropy.exp().float(), batch_size=B)
            self.log(f"train/usage_s{k}", usage_K[k], batch_size=B)
        if self.task_cfg.restart_dead_codes:
            self._reservoir_NC = self._subsample(torch.cat(queries_K))
        self.log("train/restarted_codes", float(self.restarted_codes), batch_size=B)
        return terms["loss"]

    @torch.no_grad()
    def scale_queries(self, f_BChw: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The vectors the quantiser matches at every scale, and their nearest codes.

        Scale k quantises z_k = area_down(f - f_hat_{k-1}, p_k) (the full residual at the last scale,
        docs/REFERENCES.md B7). Returns ([z_k as (B * p_k^2, C) float32], [idx_k (B * p_k^2,) int64]); the indices
        are those of `VQVAE.img_to_idxBl` up to float rounding of near-ties (the residual is summed in another
        order).
        """
        quantize = self.vqvae.quantize
        f_BChw = f_BChw.detach().float()
        C = f_BChw.shape[1]
        f_hats = quantize.f_to_idxBl_or_fhat(f_BChw, to_fhat=True)
        queries, indices = [], []
        for k, pn in enumerate(quantize.patch_nums):
            rest_BChw = f_BChw if k == 0 else f_BChw - f_hats[k - 1]
            if k != quantize.num_scales - 1:
                rest_BChw = F.interpolate(rest_BChw, size=(pn, pn), mode="area")
            z_NC = rest_BChw.permute(0, 2, 3, 1).reshape(-1, C)
            queries.append(z_NC)
            indices.append(quantize.nearest_code(z_NC))
        return queries, indices

    def _subsample(self, z_NC: torch.Tensor) -> torch.Tensor:
        if z_NC.shape[0] <= _RESERVOIR_ROWS:
            return z_NC
        g = torch.Generator(device="cpu").manual_seed(self.task_cfg.seed * 1_000_003 + self.global_step)
        return z_NC[torch.randperm(z_NC.shape[0], generator=g)[:_RESERVOIR_ROWS].to(z_NC.device)]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After the optimizer step: the codebook edit must not race the update. global_step counts optimizer steps,
        # so under gradient accumulation the check below fires once per step, on every rank alike.
        cfg = self.task_cfg
        step = self.global_step
        if cfg.restart_dead_codes and step > 0 and step % cfg.restart_every == 0 and step != self._last_restart_step:
            self._last_restart_step = step
            self.restart_dead_codes()

    @torch.no_grad()
    def restart_dead_codes(self) -> int:
        """Re-initialise the codes hit fewer than `restart_min_hits` times since the last call; returns how many.

        New codes are latest-batch queries drawn without replacement while there are enough (a tiny jitter keeps
        duplicates apart otherwise). Their AdamW moments are reset so that stale statistics do not move them.
        The hit window starts again afterwards.
        """
        hits_V = self.code_hits_V.clone()
        distributed = tdist.is_available() and tdist.is_initialized()
        if distributed:
            tdist.all_reduce(hits_V)  # the same dead set on every rank
        dead_V = hits_V < self.task_cfg.restart_min_hits
        num_dead = int(dead_V.sum())
        self.code_hits_V.zero_()
        if num_dead == 0 or self._reservoir_NC is None or self._reservoir_NC.shape[0] == 0:
            return 0
        weight_VC = self.vqvae.quantize.embedding.weight
        g = torch.Generator(device="cpu").manual_seed(self.task_cfg.seed * 1_000_003 + 7919 * self.global_step + 1)
        pool_NC = self._reservoir_NC
        if pool_NC.shape[0] >= num_dead:
            pick = torch.randperm(pool_NC.shape[0], generator=g)[:num_dead]
            new_DC = pool_NC[pick.to(pool_NC.device)].clone()
        else:
            pick = torch.randint(pool_NC.shape[0], (num_dead,), generator=g)
            new_DC = pool_NC[pick.to(pool_NC.device)].clone()
            jitter = torch.randn(new_DC.shape, generator=g).to(new_DC) * (1e-3 * pool_NC.std().clamp_min(1e-6))
            new_DC = new_DC + jitter
        new_DC = new_DC.to(device=weight_VC.device, dtype=weight_VC.dtype)
        if distributed:
            tdist.broadcast(new_DC, src=0)  # rank 0's queries: the codebook stays identical across ranks
        weight_VC[dead_V.to(weight_VC.device)] = new_DC
        self._reset_optimizer_rows(weight_VC, dead_V.to(weight_VC.device))
        self.restarted_codes += num_dead
        return num_dead

    def _reset_optimizer_rows(self, param: torch.Tensor, rows_V: torch.Tensor) -> None:
        trainer = self._trainer  # None outside fit (e.g. a direct call in a test)
        if trainer is None:
            return
        for opt in trainer.optimizers:
            state = opt.state.get(param, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].shape == param.shape:
                    state[key][rows_V] = 0

    # -------------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        img_B3HW = batch[0]
        terms, recon_B3HW, _, _ = self._losses(img_B3HW)
        for name, value in terms.items():
            self.log(f"val/{name}", value, prog_bar=name == "psnr", batch_size=img_B3HW.shape[0], sync_dist=True)
        if batch_idx == 0 and self.task_cfg.grid_images > 0:
            self._log_grid(img_B3HW, recon_B3HW)

    def _log_grid(self, img_B3HW: torch.Tensor, recon_B3HW: torch.Tensor) -> None:
        from torchvision.utils import make_grid

        n = min(self.task_cfg.grid_images, img_B3HW.shape[0])
        both = torch.cat([img_B3HW[:n].float(), recon_B3HW[:n].float().clamp(-1, 1)]).add(1).div(2)
        self.val_grid = make_grid(both.cpu(), nrow=n, padding=2, pad_value=1.0)
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
                experiment.add_image("val/reconstructions", self.val_grid, self.global_step)

    # ----------------------------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW; weight decay only on conv weights (not on norms, biases, the codebook or Phi's blend)."""
        cfg = self.task_cfg
        decay, no_decay = [], []
        for name, p in self.vqvae.named_parameters():
            if not p.requires_grad:
                continue
            is_codebook = name.startswith("quantize.embedding")
            (decay if p.ndim >= 2 and not is_codebook else no_decay).append(p)
        total = self.trainer.max_steps if self._trainer is not None else -1
        return adamw_warmup_cosine(decay, no_decay, cfg.lr, cfg.betas, cfg.weight_decay, cfg.warmup_steps, total,
                                   cfg.min_lr_ratio)

    # -------------------------------------------------------------------------------------------------- export
    def export_vqvae(self, path: str | Path) -> tuple[Path, Path]:
        """Write the VQVAE as a bare state dict (the layout of `vae_ch160v4096z32.pth`) plus `<path>.json`.

        The JSON holds the `VQVAEConfig` needed to rebuild the model (`varianttrain.checkpoints.load_exported_vqvae`),
        the image size, the training step and the task config. Returns (state-dict path, JSON path).
        """
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.vqvae.state_dict().items()}
        return save_vqvae_export(path, state, self.task_cfg.vqvae_config(),
                                 global_step=int(self.global_step) if self._trainer is not None else 0,
                                 task_config=to_dict(self.task_cfg))

    def export(self, out_dir: str | Path) -> list[Path]:
        """Runner contract: write `<out_dir>/vqvae.pth` and `<out_dir>/vqvae.json`; return both paths."""
        return list(self.export_vqvae(Path(out_dir) / "vqvae.pth"))


def build_tokenizer_module(task_cfg: TokenizerTaskConfig | Mapping[str, Any]) -> TokenizerModule:
    """Factory for the runner's task registry: a `TokenizerModule` from a config object or its YAML mapping."""
    return TokenizerModule(task_cfg)

