"""VAR's image preprocessing (official `build_dataset`): LANCZOS short-side resize, crop, optional flip, [-1, 1]."""

from __future__ import annotations

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

# VAR resizes the shorter side to round(1.125 * res) before cropping (`mid_reso` in VAR's utils/data.py).
MID_RESOLUTION_RATIO = 1.125


class ToSignedUnitRange:
    """Map a [0, 1] tensor to [-1, 1] as x * 2 - 1 (VAR's `normalize_01_into_pm1`).

    A class rather than a lambda so the transform pickles into spawn-started loader workers (docs/REFERENCES.md L7).
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.add(x).add_(-1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def build_transform(resolution: int = 256, train: bool = True, hflip: bool = False) -> T.Compose:
    """The VAR transform for a PIL image -> float32 tensor (3, resolution, resolution) in [-1, 1].

    Train: Resize(round(1.125 * res), LANCZOS) -> RandomCrop(res) -> [RandomHorizontalFlip] -> ToTensor -> x*2-1.
    Val: the same with CenterCrop and never a flip. `hflip` is ignored when train is False.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    mid = round(MID_RESOLUTION_RATIO * resolution)
    steps: list = [T.Resize(mid, interpolation=InterpolationMode.LANCZOS)]
    if train:
        steps.append(T.RandomCrop(resolution))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    else:
        steps.append(T.CenterCrop(resolution))
    steps += [T.ToTensor(), ToSignedUnitRange()]
    return T.Compose(steps)
