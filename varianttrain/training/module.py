"""`SupernetModule`: VARiant elastic-depth fine-tuning (and from-scratch pre-training) of VAR as a LightningModule.

One optimizer step trains either the full network or one subnet d ([VARiant], docs/REFERENCES.md): scales < N (the
bridge zone) run every block, later scales (the flexible zone) only the blocks `layer_subset(D, d, rule, choices)`.
Which one is decided by `ProgressiveSubnetSchedule` (callbacks.py) from (seed, global_step) and handed over through
`set_active_subnet`; the module itself never draws random numbers for it.

Loss: `varianttrain.losses.var_loss`, the official token-mean cross-entropy (every token weighted 1/L,
docs/REFERENCES.md B16). The VQVAE is frozen and tokenises images on the fly, or the batch already holds token indices
(pre-tokenised data, `data.format: indices`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
import torchmetrics
from torch import nn

from varianttrain.checkpoints import load_var_weights, load_vqvae_weights
from varianttrain.file_hash import cached_sha256
from varianttrain.losses import per_scale_mean, token_cross_entropy, var_loss
from varianttrain.models.build import empty_model
from varianttrain.models.depth_plan import DepthPlan, layer_subset
from varianttrain.models.var import VAR
from varianttrain.models.vqvae import VQVAE
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import StaticPlanMethod, generate
from varianttrain.training.config import SupernetRunConfig
from varianttrain.training.optim import VARSchedule, build_optimizer

log = logging.getLogger(__name__)

_INDEX_DTYPES = (torch.int16, torch.int32, torch.int64, torch.uint8)


class ScaleTokenStats(torchmetrics.Metric):
    """Per-scale sums of token cross-entropy, correct top-1 predictions and token counts (summed over ranks)."""

    full_state_update = False

    def __init__(self, patch_nums: tuple[int, ...]):
        super().__init__()
        self.sizes = [pn * pn for pn in patch_nums]
        k = len(patch_nums)
        self.add_state("ce_sum", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("correct", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros(k, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ce_BL: torch.Tensor, correct_BL: torch.Tensor) -> None:
        for k, (ce, ok) in enumerate(zip(ce_BL.split(self.sizes, dim=1), correct_BL.split(self.sizes, dim=1),
                                         strict=True)):
            self.ce_sum[k] += ce.double().sum()
            self.correct[k] += ok.double().sum()
            self.count[k] += ce.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        count = self.count.clamp_min(1)
        return {"loss": self.ce_sum.sum() / count.sum(), "acc": self.correct.sum() / count.sum(),
                "loss_scale": self.ce_sum / count, "acc_scale": self.correct / count}


class SupernetModule(L.LightningModule):
    """VAR + frozen VQVAE; trains the full network or the active subnet per optimizer step.

    Args:
        cfg: the run config (`supernet` or `pretrain` task).
        full_only: never train a subnet (`task: pretrain`; p = 0); validation still reports every depth choice.
        load_initial_weights: False when resuming (the checkpoint provides every weight; init files are not read).
        run_dir: where sample grids are written as PNG (None: TensorBoard only).
    """

    def __init__(self, cfg: SupernetRunConfig, full_only: bool = False, load_initial_weights: bool = True,
                 run_dir: str | Path | None = None):
        super().__init__()
        self.cfg = cfg
        self.full_only = full_only
        self.run_dir = Path(run_dir) if run_dir is not None else None
        mcfg = cfg.model
        if load_initial_weights and mcfg.init == "scratch":
            self.var = VAR(mcfg.var_config())
            self.var.init_weights(init_adaln=mcfg.init_adaln, init_adaln_gamma=mcfg.init_adaln_gamma,
                                  init_head=mcfg.init_head)
        else:
            # Every weight comes from a file (or from the checkpoint being resumed): no random init to pay for.
            self.var = empty_model(lambda: VAR(mcfg.var_config()))
            if load_initial_weights:
                load_var_weights(self.var, mcfg.var_checkpoint, prefer_ema=mcfg.init_from_ema)
        self.var.gradient_checkpointing = mcfg.gradient_checkpointing
        # The frozen tokenizer is always read from its file, also on resume: checkpoints do not carry it (it never
        # changes); its SHA-256 goes into every checkpoint so a resume can tell that it is the same file.
        self.vqvae_sha256: str | None = None
        if mcfg.vqvae_checkpoint:
            self.vqvae = empty_model(lambda: VQVAE(mcfg.vqvae))
            load_vqvae_weights(self.vqvae, mcfg.vqvae_checkpoint)
            self.vqvae_sha256 = cached_sha256(mcfg.vqvae_checkpoint)
        else:
            self.vqvae = VQVAE(mcfg.vqvae)
            log.warning("model.vqvae_checkpoint is null: the VQVAE has random weights (smoke tests only); it is "
                        "saved inside the checkpoints, having no file to be reloaded from")
        self.vqvae.freeze()
        self.ema = None
        if cfg.ema.enabled:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.var, decay=cfg.ema.decay, update_after_step=cfg.ema.update_after_step,
                                  use_warmup=cfg.ema.use_warmup, exclude_buffers=True,
                                  device=torch.device("cpu") if cfg.ema.cpu else None)
            # exclude_buffers: VAR's buffers are constants, and averaging the -inf attention mask gives NaN.
            self.ema.requires_grad_(False)  # not trained; keeps it out of the optimizer and DDP's reducer

        scfg = cfg.supernet
        self.depth = mcfg.depth
        self.patch_nums = tuple(mcfg.patch_nums)
        self.depth_choices = tuple(scfg.depth_choices)
        self.bridge_tokens = sum(pn * pn for pn in self.patch_nums[:scfg.bridge_scales])
        self.subsets = {d: layer_subset(self.depth, d, scfg.subset_rule, self.depth_choices)
                        for d in self.depth_choices}
        self._plans = {None: DepthPlan.full(self.depth, self.patch_nums)}
        for d, subset in self.subsets.items():
            self._plans[d] = DepthPlan.subnet(self.depth, self.patch_nums, scfg.bridge_scales, subset)
        self.eval_depths: list[tuple[str, int | None]] = [("full", None)]
        self.eval_depths += [(f"d{d}", d) for d in self.depth_choices if d != self.depth]
        self.active_p = 0.0
        self.active_depth: int | None = None
        self._t_last_batch: float | None = None
        self._validations = 0
        # (metric prefix, which weights) of every validation pass; the first one also draws the sample grid.
        choice = cfg.validation.weights or ("ema" if self.ema is not None else "raw")
        self.val_weights: list[tuple[str, str]] = {"ema": [("val", "ema")], "raw": [("val", "raw")],
                                                   "both": [("val", "ema"), ("val_raw", "raw")]}[choice]
        self.val_stats = nn.ModuleDict({f"{prefix}_{key}": ScaleTokenStats(self.patch_nums)
                                        for prefix, _ in self.val_weights for key, _ in self.eval_depths})

    # ------------------------------------------------------------------ construction helpers
    def plan(self, depth: int | None) -> DepthPlan:
        """The depth plan of the full network (None) or of subnet `depth`."""
        return self._plans[depth]

    def set_active_subnet(self, p: float, depth: int | None) -> None:
        """Called by the schedule callback before every micro-batch: p(t) and this step's depth (None = full)."""
        self.active_p = 0.0 if self.full_only else float(p)
        self.active_depth = None if self.full_only else depth

    # ------------------------------------------------------------------ data -> tokens
    def prepare_batch(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gt_BL, x_BLCv teacher-forcing input, label_B) from images in [-1, 1] or from token indices."""
        x, label_B = batch[0], batch[1]
        L_total = self.var.L
        with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
            if x.dtype in _INDEX_DTYPES:
                if x.ndim != 2 or x.shape[1] != L_total:
                    raise ValueError(f"pre-tokenised batch has shape {tuple(x.shape)}; this model needs "
                                     f"(B, {L_total}) indices for patch_nums {list(self.patch_nums)}")
                gt_BL = x.long()
            else:
                gt_BL = torch.cat(self.vqvae.img_to_idxBl(x.float()), dim=1)
            idx_list = list(gt_BL.split([pn * pn for pn in self.patch_nums], dim=1))
            x_BLCv = self.vqvae.quantize.idxBl_to_var_input(idx_list)
        return gt_BL, x_BLCv, label_B.long()

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        gt_BL, x_BLCv, label_B = self.prepare_batch(batch)
        depth = self.active_depth
        logits_BLV = self.var(label_B, x_BLCv, self.plan(depth))
        label_smoothing = self.cfg.model.label_smoothing
        loss = var_loss(logits_BLV, gt_BL, label_smoothing)
        with torch.no_grad():
            # The same per-token CE again, outside the graph, for the per-zone / per-scale logs.
            ce = token_cross_entropy(logits_BLV.detach(), gt_BL, label_smoothing)
            metrics = {"train/loss": loss.detach(), "train/p": float(self.active_p),
                       "train/depth": float(depth if depth is not None else self.depth),
                       "train/loss_bridge": (ce[:, :self.bridge_tokens].mean() if self.bridge_tokens
                                             else ce.new_zeros(())),
                       "train/loss_flexible": (ce[:, self.bridge_tokens:].mean() if self.bridge_tokens < ce.shape[1]
                                               else ce.new_zeros(()))}
            for k, (pn, loss_k) in enumerate(zip(self.patch_nums, per_scale_mean(ce, self.patch_nums), strict=True)):
                metrics[f"train_scale/loss_{k:02d}_{pn}x{pn}"] = loss_k
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=label_B.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, logger=False, batch_size=label_B.shape[0])
        self.log("d", float(depth if depth is not None else self.depth), prog_bar=True, logger=False)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._t_last_batch is not None:
            dt = max(now - self._t_last_batch, 1e-9)
            images = batch[1].shape[0] * self.trainer.world_size
            self.log_dict({"perf/images_per_s": images / dt, "perf/tokens_per_s": images * self.var.L / dt},
                          on_step=True, on_epoch=False)
        self._t_last_batch = now
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "skip_counts"):
            self.log("data/skipped_train", float(dm.skip_counts()["train"]), on_step=True, on_epoch=False)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # The EMA follows optimizer steps, right after each one: a step checkpoint written at the end of the
        # batch then already holds this step's EMA, so a resumed run continues it exactly. The step count passed
        # is the one the step completes (global_step advances after this hook).
        if self.ema is not None:
            self.ema.update(self.var, step=self.trainer.global_step + 1)

    def configure_optimizers(self):
        optimizer = build_optimizer(self.var, self.cfg.optim, on_cuda=self.device.type == "cuda")
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
        scheduler = VARSchedule(optimizer, self.cfg.optim, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from varianttrain.config_io import to_dict

        # Everything export.py and eval.py need to rebuild the model without the run directory.
        checkpoint["varianttrain"] = {"config": to_dict(self.cfg), "subsets": {d: list(s) for d, s in
                                                                               self.subsets.items()},
                                      "vqvae_checkpoint": self.cfg.model.vqvae_checkpoint,
                                      "vqvae_sha256": self.vqvae_sha256}
        if self.vqvae_sha256 is not None:  # the frozen tokenizer is reloaded from its file (SHA-256 above)
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith("vqvae.")]:
                del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Checkpoints leave the frozen VQVAE out (see on_save_checkpoint): give Lightning's strict load the
        # weights this module read from the same file (the preflight compared its SHA-256 with the recorded one).
        state = checkpoint["state_dict"]
        for key, value in self.vqvae.state_dict().items():
            state.setdefault(f"vqvae.{key}", value)

    # ------------------------------------------------------------------ validation
    def _weights(self, which: str) -> VAR:
        return self.ema.module if which == "ema" else self.var

    def on_validation_epoch_start(self) -> None:
        if self.ema is not None and self.cfg.ema.cpu and any(w == "ema" for _, w in self.val_weights):
            self.ema.module.to(self.device)  # validate where the data is; moved back at the end

    def validation_step(self, batch, batch_idx: int) -> None:
        gt_BL, x_BLCv, label_B = self.prepare_batch(batch)
        for prefix, which in self.val_weights:
            model = self._weights(which)
            for key, depth in self.eval_depths:
                logits_BLV = model(label_B, x_BLCv, self.plan(depth))
                ce_BL = token_cross_entropy(logits_BLV, gt_BL)
                self.val_stats[f"{prefix}_{key}"].update(ce_BL, logits_BLV.argmax(-1) == gt_BL)
        # Sampling runs inside validation_step (through the strategy's forward) on every rank: FSDP needs all ranks
        # to gather the same parameters; the grid itself is identical on every rank and written by rank 0.
        vcfg = self.cfg.validation
        every = vcfg.sample_every_n_validations
        if batch_idx == 0 and every and self._validations % every == 0:
            for prefix, which in self.val_weights:
                self._sample_grid(self._weights(which), suffix="" if prefix == "val" else f"_{which}")

    def on_validation_epoch_end(self) -> None:
        metrics = {}
        for prefix, _ in self.val_weights:
            for key, _ in self.eval_depths:
                stats = self.val_stats[f"{prefix}_{key}"]
                if int(stats.count.sum()) == 0 and not torch.distributed.is_initialized():
                    continue
                res = stats.compute()  # torchmetrics all-reduces the sums across ranks here
                metrics[f"{prefix}/{key}/loss"] = res["loss"].float()
                metrics[f"{prefix}/{key}/acc"] = res["acc"].float()
                for k, pn in enumerate(self.patch_nums):
                    metrics[f"{prefix}_scale/{key}/acc_{k:02d}_{pn}x{pn}"] = res["acc_scale"][k].float()
                    metrics[f"{prefix}_scale/{key}/loss_{k:02d}_{pn}x{pn}"] = res["loss_scale"][k].float()
                stats.reset()
        if metrics:
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        if self.ema is not None and self.cfg.ema.cpu:
            self.ema.module.to("cpu")
        if not self.trainer.sanity_checking:
            self._validations += 1

    @torch.no_grad()
    def _sample_grid(self, model: VAR, suffix: str = "") -> None:
        from torchvision.utils import make_grid, save_image

        vcfg = self.cfg.validation
        labels = [c for c in vcfg.sample_classes for _ in range(vcfg.samples_per_class)]  # classes checked by config
        label_B = torch.tensor(labels, device=self.device)
        seeds = [vcfg.sample_seed * 1_000_003 + i for i in range(len(labels))]
        sampling = SamplingConfig.preset(vcfg.sampling_protocol)
        rows = []
        for key, depth in self.eval_depths:
            out = generate(model, self.vqvae, label_B, sampling, TokenRNG.per_image(seeds, device=self.device),
                           StaticPlanMethod(self.plan(depth), name=key))
            rows.append(out.images_B3HW.float().cpu())
        grid = make_grid(torch.cat(rows), nrow=len(labels), padding=2, pad_value=1.0)
        if not self.trainer.is_global_zero or self.trainer.sanity_checking:
            return
        step = self.trainer.global_step
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):  # TensorBoard
                experiment.add_image(f"samples{suffix}/rows_" + "_".join(k for k, _ in self.eval_depths), grid, step)
        if self.run_dir is not None:
            out_dir = self.run_dir / "samples"
            out_dir.mkdir(parents=True, exist_ok=True)
            save_image(grid, out_dir / f"step{step:07d}{suffix}.png")
