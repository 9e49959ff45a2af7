"""Training task `classifier`: a small ResNet-style CNN whose features / logits stand in for Inception in demo mode.

The demo cannot download the TF Inception weights, so its FID / IS use this classifier trained on the demo dataset
instead: `DemoFeatureExtractor` maps uint8 images to (penultimate features, logits), the `FeatureExtractor`
protocol of `varianttrain.evaluation.metrics`. Demo numbers are therefore comparable only with other demo numbers
measured with the same classifier file, never with published Inception FID / IS.

Architecture (`DemoClassifierNet`, 0.70 M parameters with the defaults): a stride-2 3x3 stem, one stage per entry
of `widths` (post-activation basic residual blocks with BatchNorm, as in ResNet-18; every stage after the first halves
the resolution), global average pooling (any input resolution works), dropout, a linear head. The pooled vector is
the feature used for FID (F = widths[-1]).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from varianttrain.config_io import ensure_config, to_dict
from varianttrain.training.optim import adamw_warmup_cosine, check_adamw_settings

__all__ = [
    "EXPORT_FORMAT",
    "ClassifierModule",
    "ClassifierTaskConfig",
    "DemoClassifierNet",
    "DemoFeatureExtractor",
    "build_classifier_module",
    "load_demo_extractor",
]

EXPORT_FORMAT = "varianttrain-demo-classifier"  # "format" entry of a file written by `save_classifier`
EXPORT_FORMAT_VERSION = 1


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
        return {"num_classes": self.num_classes, "widths": list(self.widths),
                "blocks_per_stage": self.blocks_per_stage, "dropout": self.dropout}


# ------------------------------------------------------------------------------------------------------ network
class _BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (1x1 conv + BN when the shape changes) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        # Zero-init of the last BN scale: every block starts as an identity, which trains small ResNets faster.
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x_BChw: torch.Tensor) -> torch.Tensor:
        h_BChw = F.relu(self.bn1(self.conv1(x_BChw)))
        return F.relu(self.shortcut(x_BChw) + self.bn2(self.conv2(h_BChw)))


class DemoClassifierNet(nn.Module):
    """Small ResNet for images in [-1, 1] of any resolution: `forward` gives logits, `features` the pooled vector."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] | list[int] = (32, 64, 128),
                 blocks_per_stage: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        # Stride-2 stem: 64 px images are processed at 32, 16, 8 px, cheap enough for a laptop CPU.
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, c_in = [], widths[0]
        for s, c_out in enumerate(widths):
            blocks = [_BasicBlock(c_in if b == 0 else c_out, c_out, 2 if (s > 0 and b == 0) else 1)
                      for b in range(blocks_per_stage)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(c_in, num_classes)
        self.num_features = c_in
        self.num_classes = num_classes

    def features(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, F): global average of the last stage's activations."""
        return self.stages(self.stem(img_B3HW)).mean(dim=(2, 3))

    def forward_both(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features (B, F), logits (B, K)) in one pass."""
        feat_BF = self.features(img_B3HW)
        return feat_BF, self.head(self.dropout(feat_BF))

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.forward_both(img_B3HW)[1]


# ------------------------------------------------------------------------------------------ feature extractor
class DemoFeatureExtractor(nn.Module):
    """The `FeatureExtractor` protocol on top of a trained `DemoClassifierNet`: uint8 (B, 3, H, W) -> features, logits.

    Inputs are mapped to [-1, 1] as x / 127.5 - 1 (the training data's [0, 1] -> x * 2 - 1 on uint8 values) and,
    when their size differs from the training resolution, resized to it (bilinear, antialiased) first. Always in
    eval mode (BatchNorm running statistics, no dropout), float32 with autocast disabled and no gradients, so each
    image's outputs do not depend on the other images of the batch or on the caller's precision settings.
    """

    def __init__(self, net: DemoClassifierNet, resolution: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.resolution = resolution  # training resolution; None = feed inputs at their own size
        self.num_features = net.num_features
        self.num_classes = net.num_classes
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DemoFeatureExtractor:
        """Inference only: stays in eval mode whatever `mode` is (training-mode BatchNorm would mix the batch)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images_B3HW.dtype != torch.uint8 or images_B3HW.dim() != 4 or images_B3HW.shape[1] != 3:
            raise ValueError(f"expected uint8 RGB images (B, 3, H, W), got {images_B3HW.dtype} "
                             f"{tuple(images_B3HW.shape)}")
        device = next(self.net.parameters()).device
        with torch.autocast(device_type=device.type, enabled=False):
            x_B3HW = images_B3HW.to(device).float()
            size = self.resolution
            if size is not None and tuple(x_B3HW.shape[-2:]) != (size, size):
                x_B3HW = F.interpolate(x_B3HW, size=(size, size), mode="bilinear", align_corners=False,
                                       antialias=True)
            feat_BF, logits_BK = self.net.forward_both(x_B3HW / 127.5 - 1.0)
        return feat_BF.float(), logits_BK.float()


def load_demo_extractor(path: str | Path, device: str | torch.device = "cpu") -> DemoFeatureExtractor:
    """Load a classifier written by `ClassifierModule.save_classifier` (or a `classifier` task Lightning checkpoint).

    Raises:
        FileNotFoundError: no file at `path` (the message says how to produce one).
        varianttrain.checkpoints.CheckpointError: the file is unreadable or is not a demo classifier.
    """
    from varianttrain.checkpoints import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"demo classifier file {path} does not exist: train the `classifier` task on the demo dataset and export "
            "it (ClassifierModule.export writes classifier.pt; see docs/DEMO_MODELS.md)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(f"could not read {path} as a PyTorch file: {err}") from err
    if isinstance(obj, Mapping) and obj.get("format") == EXPORT_FORMAT:
        arch, state, resolution = obj.get("arch"), obj.get("state_dict"), obj.get("resolution")
    elif isinstance(obj, Mapping) and isinstance(obj.get("hyper_parameters"), Mapping) and "task_cfg" in obj[
            "hyper_parameters"] and isinstance(obj.get("state_dict"), Mapping):  # Lightning checkpoint of the task
        try:
            arch = ensure_config(ClassifierTaskConfig, obj["hyper_parameters"]["task_cfg"]).arch()
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: not a `classifier` task checkpoint: {err}") from err
        state = {k[len("net."):]: v for k, v in obj["state_dict"].items() if k.startswith("net.")}
        resolution = int(obj["state_dict"].get("train_resolution", torch.tensor(0)))
    else:
        keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path} is not a demo classifier file (expected format {EXPORT_FORMAT!r} written by "
                              f"ClassifierModule.save_classifier); found {keys}")
    if not isinstance(arch, Mapping) or not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: demo classifier file without 'arch' / 'state_dict' entries")
    try:
        net = DemoClassifierNet(**arch)
        net.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the weights do not fit the recorded architecture {dict(arch)}: {err}") from err
    return DemoFeatureExtractor(net, resolution=int(resolution) if resolution else None).to(device)


# ---------------------------------------------------------------------------------------------- lightning module
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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        resolution = int(self.train_resolution)
        torch.save({
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "arch": self.task_cfg.arch(),
            "resolution": resolution if resolution > 0 else None,
            "state_dict": {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()},
            "task_config": to_dict(self.task_cfg),
        }, path)
        return path

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
