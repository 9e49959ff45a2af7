"""The demo classifier network (a small ResNet) and its feature-extractor view, the demo's stand-in for Inception.

The demo cannot download the TF Inception weights, so its FID / IS use this classifier trained on the demo dataset
(the `classifier` task, `varianttrain.demo.classifier_task`) instead: `DemoFeatureExtractor` maps uint8 images to
(penultimate features, logits), the `FeatureExtractor` protocol of `varianttrain.evaluation.metrics`. Demo numbers
are therefore comparable only with other demo numbers measured with the same classifier file, never with published
Inception FID / IS.

Architecture (`DemoClassifierNet`, 0.70 M parameters with the defaults): a stride-2 3x3 stem, one stage per entry
of `widths` (post-activation basic residual blocks with BatchNorm, as in ResNet-18; every stage after the first halves
the resolution), global average pooling (any input resolution works), dropout, a linear head. The pooled vector is
the feature used for FID (F = widths[-1]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def net_arch(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of `DemoClassifierNet` (what a classifier file records as "arch"), picked from a
    mapping that has them, such as a `classifier` task config as a dict.

    Raises KeyError / TypeError / ValueError when a field is missing or of the wrong kind.
    """
    return {"num_classes": int(fields["num_classes"]), "widths": [int(w) for w in fields["widths"]],
            "blocks_per_stage": int(fields["blocks_per_stage"]), "dropout": float(fields["dropout"])}


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
