"""Demo training task `classifier`: trains the demo classifier (`varianttrain.models.demo_classifier`), whose
features / logits stand in for Inception in the demo's FID / IS.

The trained network is written as `classifier.pt` (`varianttrain.checkpoints.demo_classifier`), which eval.py reads
with `metrics.extractor=demo-classifier`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from varianttrain.checkpoints import save_demo_classifier
from varianttrain.config_io import ensure_config, to_dict
from varianttrain.models.demo_classifier import DemoClassifierNet, DemoFeatureExtractor, net_arch
from varianttrain.training.optim import adamw_warmup_cosine, check_adamw_settings

__all__ = [
    "ClassifierModule",
    "ClassifierTaskConfig",
    "build_classifier_module",
]


@dataclass(frozen=True)
class ClassifierTaskConfig:
    """Everything the `classifier` task needs besides data and trainer settings (`task:` group of a run config)."""

    # --- architecture ---
    num_classes: int = 10  # must equal data.num_classes
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage; the feature width F is widths[-1]
    blocks_per_stage: int = 2  # basic residual blocks per stage
    dropout: float = 0.1  # before the linear head (training only)
    # --- optimisation (AdamW; linear warmup, then cosine decay to min_lr_ratio * lr over trainer.max_steps) ---
    lr: float = 2e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.05  # conv / linear weights only (never BatchNorm parameters or biases)
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01
    label_smoothing: float = 0.0  # > 0 caps the logits' confidence, which lowers the demo Inception Score's range
    # --- batch augmentation (on the device, after the data module's own crop / flip) ---
    hflip: bool = True  # random horizontal flip
    rot90: bool = False  # random multiples of 90 degrees (only for rotation-invariant classes, e.g. demo shapes)
    max_shift: int = 4  # random translation by up to this many pixels (reflect padding)
    brightness: float = 0.1  # random per-image brightness scale in [1 - b, 1 + b]; never hue (colour is a cue)
    seed: int = 0  # model initialisation and augmentation draws

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if not self.widths or min(self.widths) < 1 or self.blocks_per_stage < 1:
            raise ValueError(f"need non-empty positive widths and blocks_per_stage >= 1, got {self.widths}, "
                             f"{self.blocks_per_stage}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"dropout and label_smoothing must lie in [0, 1), got {self.dropout}, "
                             f"{self.label_smoothing}")
        check_adamw_settings(self.lr, self.betas, self.weight_decay, self.warmup_steps, self.min_lr_ratio)
        if self.max_shift < 0 or not 0.0 <= self.brightness < 1.0:
            raise ValueError(f"need max_shift >= 0 and brightness in [0, 1), got {self.max_shift}, {self.brightness}")

    def arch(self) -> dict[str, Any]:
        """The constructor arguments of `DemoClassifierNet` (what an exported file records)."""
        return net_arch(dataclasses.asdict(self))


class ClassifierModule(L.LightningModule):
    """Trains `DemoClassifierNet` (attribute `net`) with cross-entropy on `(img_B3HW in [-1, 1], label_B)` batches.

    Logged: `train/loss`, `train/acc`, `val/loss`, `val/acc` (torchmetrics multiclass accuracy, micro average).
    """

    def __init__(self, task_cfg: ClassifierTaskConfig | Mapping[str, Any]) -> None:
        super().__init__()
        self.task_cfg = ensure_config(ClassifierTaskConfig, task_cfg)
        self.save_hyperparameters({"task_cfg": to_dict(self.task_cfg)})
        with torch.random.fork_rng(devices=[]):  # initialisation depends on the task seed only
            torch.manual_seed(self.task_cfg.seed)
            self.net = DemoClassifierNet(**self.task_cfg.arch())
        # Resolution of the training images (0 until the first batch); exported so that the feature extractor can
        # bring other sizes to it. A buffer, so Lightning checkpoints carry it.
        self.register_buffer("train_resolution", torch.tensor(0, dtype=torch.int64))
        self.train_acc = MulticlassAccuracy(num_classes=self.task_cfg.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=self.task_cfg.num_classes, average="micro")

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of images in [-1, 1]."""
        return self.net(img_B3HW)

    def augment(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Random flip / 90-degree rotation / translation / brightness per image, as the config enables.

        Draws come from a generator keyed on (seed, global_step, rank), so a run is reproducible and ranks differ.
        """
        cfg = self.task_cfg
        B, _, H, W = img_B3HW.shape
        g = torch.Generator(device="cpu").manual_seed(
            cfg.seed * 1_000_003 + self.global_step * 1009 + (self.global_rank if self._trainer is not None else 0))
        x = img_B3HW
        if cfg.hflip:
            flip_B = (torch.rand(B, generator=g) < 0.5).to(x.device)
            x = torch.where(flip_B[:, None, None, None], x.flip(-1), x)
        if cfg.rot90 and H == W:
            k_B = torch.randint(4, (B,), generator=g)
            x = torch.stack([torch.rot90(x[i], int(k_B[i]), dims=(1, 2)) for i in range(B)])
        if cfg.max_shift > 0:
            s = cfg.max_shift
            padded = F.pad(x, (s, s, s, s), mode="reflect" if s < min(H, W) else "replicate")
            dy_B, dx_B = torch.randint(2 * s + 1, (2, B), generator=g).tolist()
            x = torch.stack([padded[i, :, dy_B[i]:dy_B[i] + H, dx_B[i]:dx_B[i] + W] for i in range(B)])
        if cfg.brightness > 0:
            scale_B = 1.0 + (torch.rand(B, generator=g) * 2 - 1) * cfg.brightness
            x = ((x + 1) * scale_B.to(x)[:, None, None, None] - 1).clamp(-1, 1)  # scale on the [0, 1] scale
        return x

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        img_B3HW, label_B = batch
        if int(self.train_resolution) == 0:
            self.train_resolution.fill_(img_B3HW.shape[-1] if img_B3HW.shape[-1] == img_B3HW.shape[-2] else 0)
        logits_BK = self.net(self.augment(img_B3HW))
        loss = F.cross_entropy(logits_BK.float(), label_B, label_smoothing=self.task_cfg.label_smoothing)
        self.train_acc(logits_BK.detach(), label_B)
        B = img_B3HW.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=B)
        self.log("train/acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=False, batch_size=B)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        img_B3HW, label_B = batch
        logits_BK = self.net(img_B3HW)
        loss = F.cross_entropy(logits_BK.float(), label_B)
        self.val_acc(logits_BK, label_B)
        B = img_B3HW.shape[0]
        self.log("val/loss", loss, batch_size=B, sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True, on_step=False, on_epoch=True, batch_size=B)

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW; weight decay on conv / linear weights only."""
        cfg = self.task_cfg
        decay = [p for p in self.net.parameters() if p.ndim >= 2]
        no_decay = [p for p in self.net.parameters() if p.ndim < 2]
        total = self.trainer.max_steps if self._trainer is not None else -1
        return adamw_warmup_cosine(decay, no_decay, cfg.lr, cfg.betas, cfg.weight_decay, cfg.warmup_steps, total,
                                   cfg.min_lr_ratio)

    # -------------------------------------------------------------------------------------------------- export
    def save_classifier(self, path: str | Path) -> Path:
        """Write the trained network in the format `load_demo_extractor` reads (one `weights_only`-safe file)."""
        resolution = int(self.train_resolution)
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
        return save_demo_classifier(path, state, self.task_cfg.arch(), resolution if resolution > 0 else None,
                                    to_dict(self.task_cfg))

    def feature_extractor(self) -> DemoFeatureExtractor:
        """An extractor on a frozen copy of the current network (for in-process evaluation; training is unaffected)."""
        resolution = int(self.train_resolution)
        return DemoFeatureExtractor(copy.deepcopy(self.net), resolution=resolution if resolution > 0 else None)

    def export(self, out_dir: str | Path) -> list[Path]:
        """Runner contract: write `<out_dir>/classifier.pt`; return its path in a list."""
        return [self.save_classifier(Path(out_dir) / "classifier.pt")]


def build_classifier_module(task_cfg: ClassifierTaskConfig | Mapping[str, Any]) -> ClassifierModule:
    """Factory for the runner's task registry: a `ClassifierModule` from a config object or its YAML mapping."""
    return ClassifierModule(task_cfg)
