"""AdamW with VAR's parameter groups and learning-rate / weight-decay schedules (official
`utils/lr_control.py`; docs/REFERENCES.md B18)."""

from __future__ import annotations

import math

import torch
from torch import nn

from varianttrain.training.config import OptimConfig

# Substrings that exclude a parameter from weight decay in the official trainer (utils/lr_control.py).
NO_DECAY_NAMES = ("cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos_1LC", "pos_start",
                  "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias", "scale_mul")


def decays(name: str, param: torch.Tensor) -> bool:
    """Official rule: decay only matrices (ndim >= 2) that are not biases and not position/level/scale tensors.

    Note: `class_emb.weight` and `word_embed.weight` *are* decayed by the official trainer; `lvl_embed.weight`,
    `pos_1LC`, `pos_start`, `scale_mul_1H11` and every bias are not (LayerNorms have no affine parameters).
    """
    return param.ndim >= 2 and not name.endswith("bias") and not any(k in name for k in NO_DECAY_NAMES)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: `decay` (weight_decay) and `no_decay` (0.0), trainable parameters only."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if decays(name, param) else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def build_optimizer(model: nn.Module, cfg: OptimConfig, on_cuda: bool) -> torch.optim.AdamW:
    """AdamW(betas (0.9, 0.95), eps 1e-8) on the two groups; fused on CUDA unless configured otherwise."""
    fused = on_cuda if cfg.fused is None else cfg.fused
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             fused=fused or None)


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` of `total_steps`.

    Warmup rises linearly from warmup_start_factor to 1 over warmup_steps. Then:
    `constant` stays 1; `lin0` (official) stays 1 for the first 5% of the remaining steps and decays linearly to
    end_factor; `cosine` decays from 1 to end_factor along a half cosine.
    """
    wp = cfg.warmup_steps
    if step < wp:
        return cfg.warmup_start_factor + (1 - cfg.warmup_start_factor) * step / wp
    if cfg.schedule == "constant":
        return 1.0
    q = min(max((step - wp) / max(total_steps - 1 - wp, 1), 0.0), 1.0)
    if cfg.schedule == "lin0":
        if q < 0.05:
            return 1.0
        return cfg.end_factor + (1 - cfg.end_factor) * (1 - q) / 0.95
    return cfg.end_factor + (1 - cfg.end_factor) * 0.5 * (1 + math.cos(math.pi * q))


def weight_decay_at(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """Official cosine weight-decay schedule from weight_decay to weight_decay_end (constant when end is None)."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    c = 0.5 + 0.5 * math.cos(math.pi * min(step, total_steps - 1) / max(total_steps - 1, 1))
    return cfg.weight_decay_end + (cfg.weight_decay - cfg.weight_decay_end) * c


class VARSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Per-optimizer-step lr (and weight decay of the `decay` group) following `lr_factor` / `weight_decay_at`.

    State (`last_epoch` = steps taken) is saved in Lightning checkpoints, so a resumed run continues exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
        self.cfg, self.total_steps = cfg, max(int(total_steps), 1)
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        wd = weight_decay_at(self.cfg, step, self.total_steps)
        for group in self.optimizer.param_groups:
            if group.get("name") == "decay":
                group["weight_decay"] = wd
        factor = lr_factor(self.cfg, step, self.total_steps)
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        # The config is rebuilt from the run config on resume; only the counters are state.
        return {k: v for k, v in super().state_dict().items() if k != "cfg"}


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """lr factor of the small demo tasks: linear warm-up to 1, then cosine to `min_ratio` at `total_steps`.

    Constant 1 after warm-up when `total_steps` is unknown (<= warmup_steps), e.g. a run bounded by epochs.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    t = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def adamw_warmup_cosine(decay: list[nn.Parameter], no_decay: list[nn.Parameter], lr: float,
                        betas: tuple[float, float], weight_decay: float, warmup_steps: int, total_steps: int,
                        min_lr_ratio: float) -> dict:
    """AdamW over (decayed, not decayed) parameter groups with a per-step warm-up + cosine schedule (Lightning dict)."""
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine_factor(step, warmup_steps, total_steps, min_lr_ratio))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def check_adamw_settings(lr: float, betas: tuple[float, float], weight_decay: float, warmup_steps: int,
                         min_lr_ratio: float) -> None:
    """Validate the optimizer fields the demo task configs share; ValueError names the bad values."""
    if lr <= 0 or not all(0.0 <= b < 1.0 for b in betas) or weight_decay < 0:
        raise ValueError(f"need lr > 0, betas in [0, 1), weight_decay >= 0; got {lr}, {betas}, {weight_decay}")
    if warmup_steps < 0 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"need warmup_steps >= 0 and min_lr_ratio in [0, 1], got {warmup_steps}, {min_lr_ratio}")
