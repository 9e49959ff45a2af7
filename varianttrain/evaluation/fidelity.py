"""Per-image fidelity to the full model: PSNR and SSIM of a method's sample against the full model's sample with
the same seed.

Meaningful only because every method draws its random numbers exactly like the full model (one multinomial draw per
token of every scale, in the same order; tested in tests/test_rng_consumption.py): image i of any method starts from
the same random stream as image i of the full model, so the pair differs only by what the method changed. Computed
with torchmetrics on [0, 1] images (data range 1); PSNR of two identical images is +inf and is reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from varianttrain.evaluation.images import load_image


@dataclass(frozen=True)
class FidelityScores:
    """Per-image PSNR (dB) and SSIM of one method against the full model, in work-list order."""

    psnr_N: np.ndarray
    ssim_N: np.ndarray

    def summary(self) -> dict[str, float]:
        finite = self.psnr_N[np.isfinite(self.psnr_N)]
        return {"psnr_db": float(self.psnr_N.mean()), "psnr_db_finite_mean": float(finite.mean()) if len(finite)
                else float("inf"), "identical_images": int((~np.isfinite(self.psnr_N)).sum()),
                "ssim": float(self.ssim_N.mean())}


def pair_scores(method_B3HW: torch.Tensor, full_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(PSNR, SSIM) per image of two uint8 (or [0, 1] float) batches of the same shape."""
    if method_B3HW.shape != full_B3HW.shape:
        raise ValueError(f"image batches differ in shape: {tuple(method_B3HW.shape)} vs {tuple(full_B3HW.shape)}")
    a = method_B3HW.float() / 255 if method_B3HW.dtype == torch.uint8 else method_B3HW.float()
    b = full_B3HW.float() / 255 if full_B3HW.dtype == torch.uint8 else full_B3HW.float()
    psnr = peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    return psnr, ssim


def folder_fidelity(method_dir: Path, full_dir: Path, names: Sequence[str], batch: int = 64) -> FidelityScores:
    """Scores of the PNGs `names` in `method_dir` against the same names in `full_dir`."""
    psnr, ssim = [], []
    for i in range(0, len(names), batch):
        chunk = names[i:i + batch]
        a = torch.stack([load_image(method_dir / n) for n in chunk])
        b = torch.stack([load_image(full_dir / n) for n in chunk])
        p, s = pair_scores(a, b)
        psnr.append(p.double().numpy())
        ssim.append(s.double().numpy())
    return FidelityScores(np.concatenate(psnr), np.concatenate(ssim))
