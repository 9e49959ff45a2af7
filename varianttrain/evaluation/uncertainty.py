"""How much of a quality number is sampling noise: bootstrap over images, paired across methods.

Every method samples the same work list (class, index, seed), so image i of method A and image i of method B start
from the same random numbers. Resampling image *indices* (the same indices for both methods) therefore estimates the
noise of one method's number and, paired, of the difference between two methods; the paired difference is much
tighter than two independent error bars, because most of the seed-to-seed variation is shared.

Conventions: `rounds` bootstrap resamples of the N images, each drawn with replacement by a NumPy generator seeded
with `seed` (so reports are reproducible); the standard error is the standard deviation of the resampled values
(ddof 1); a difference "exceeds the noise" when |difference| > `z` x its paired standard error (z = 2: about a 95 %
two-sided level for a normal sampling distribution).

FID on a resample needs the square root of a product of covariances. The reference side is fixed, so
tr sqrt(S_ref S) = sum sqrt(eig(A S A)) with A = S_ref^(1/2) computed once; one symmetric eigendecomposition per
resample instead of a general matrix square root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

Z_SIGNIFICANT = 2.0


def bootstrap_indices(num: int, rounds: int, seed: int = 0) -> np.ndarray:
    """(rounds, num) int64 resample indices, rows drawn with replacement."""
    if num < 2 or rounds < 2:
        raise ValueError(f"a bootstrap needs >= 2 images and >= 2 rounds, got {num} images, {rounds} rounds")
    return np.random.default_rng(seed).integers(0, num, size=(rounds, num))


@dataclass(frozen=True)
class NoiseEstimate:
    """A value with its bootstrap standard error (`se`) and the number of rounds behind it."""

    value: float
    se: float
    rounds: int

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "se": self.se, "rounds": self.rounds}


@dataclass(frozen=True)
class PairedDifference:
    """metric(A) - metric(B) on the same images, its paired standard error, and whether it exceeds the noise."""

    difference: float
    se: float
    significant: bool

    def to_dict(self) -> dict[str, float | bool]:
        return {"difference": self.difference, "se": self.se, "significant": self.significant}


MetricFn = Callable[[np.ndarray], float]  # per-image data (rows = images) -> the metric


@dataclass(frozen=True)
class Resampled:
    """A figure on all images and on every resample. Rows resampled with the same indices pair up: their
    difference on resample r is the difference of their r-th values, so each figure is computed once per row and
    resample, however many comparisons use it."""

    value: float
    values_R: np.ndarray

    def noise(self) -> NoiseEstimate:
        return NoiseEstimate(self.value, float(self.values_R.std(ddof=1)), len(self.values_R))

    def minus(self, other: Resampled, z: float = Z_SIGNIFICANT) -> PairedDifference:
        diff, se = self.value - other.value, float((self.values_R - other.values_R).std(ddof=1))
        return PairedDifference(diff, se, bool(abs(diff) > z * se))


def resample(metric: MetricFn, data: np.ndarray, indices: np.ndarray) -> Resampled:
    """The metric on all images and on every resample `indices` (rows of image indices)."""
    return Resampled(float(metric(data)), np.array([metric(data[rows]) for rows in indices]))


def bootstrap(metric: MetricFn, data: np.ndarray, indices: np.ndarray) -> NoiseEstimate:
    """The metric on all images and its standard error over the resamples `indices` (rows of image indices)."""
    return resample(metric, data, indices).noise()


def paired_difference(metric: MetricFn, data_a: np.ndarray, data_b: np.ndarray, indices: np.ndarray,
                      z: float = Z_SIGNIFICANT) -> PairedDifference:
    """metric(a) - metric(b) with the same resampled image indices on both sides (a[i] and b[i] share a seed)."""
    if len(data_a) != len(data_b):
        raise ValueError(f"paired data must have the same images: {len(data_a)} vs {len(data_b)} rows")
    return resample(metric, data_a, indices).minus(resample(metric, data_b, indices), z)


# ------------------------------------------------------------------------------------------------------ metrics
def accuracy(correct_N: np.ndarray) -> float:
    """Share of images whose predicted class is the requested one, in percent."""
    return float(100.0 * np.mean(correct_N))


class FrechetToReference:
    """FID of a feature set against fixed reference statistics, fast enough to evaluate per bootstrap round.

    Computed in float64 with torch on `device` (a GPU makes the 50 000 x 2048 covariance of every round a matter of
    milliseconds); accepts numpy arrays or tensors.
    """

    def __init__(self, mu_ref, sigma_ref, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.mu_ref = torch.as_tensor(np.asarray(mu_ref, dtype=np.float64), device=self.device)
        sigma = torch.as_tensor(np.asarray(sigma_ref, dtype=np.float64), device=self.device)
        w, v = torch.linalg.eigh((sigma + sigma.T) / 2)
        self.root_ref = (v * w.clamp(min=0).sqrt()) @ v.T  # S_ref^(1/2), symmetric PSD
        self.trace_ref = float(torch.trace(sigma))

    def __call__(self, features_NF) -> float:
        feats = torch.as_tensor(features_NF).to(self.device, torch.float64)
        mu = feats.mean(dim=0)
        centred = feats - mu
        sigma = centred.T @ centred / (feats.shape[0] - 1)
        inner = self.root_ref @ sigma @ self.root_ref
        eig = torch.linalg.eigvalsh((inner + inner.T) / 2)
        diff = mu - self.mu_ref
        trace_root = eig.clamp(min=0).sqrt().sum()  # tr sqrt(S_ref S)
        return float(diff @ diff + self.trace_ref + torch.trace(sigma) - 2 * trace_root)


def inception_score_of(logits_NK: np.ndarray) -> float:
    """IS of one set (a single split): exp(E_x KL(p(y|x) || p(y))), softmax in float64."""
    logits = np.asarray(logits_NK, dtype=np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    log_q = np.log(p.mean(axis=0, keepdims=True))
    kl = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1)
    return float(np.exp(kl.mean()))


# --------------------------------------------------------------------------------------------------- report rows
@dataclass
class PerImage:
    """One row's per-image values in work-list order (the same order for every row: image i has seed i)."""

    features_NF: torch.Tensor | None = None  # extractor features (FID)
    logits_NK: np.ndarray | None = None  # extractor logits (IS)
    correct_N: np.ndarray | None = None  # predicted class == requested class (demo classifier)

    def metrics(self, fid: FrechetToReference | None) -> dict[str, tuple[MetricFn, object]]:
        """{name: (metric function, per-image data)} of the figures this row has."""
        out: dict[str, tuple[MetricFn, object]] = {}
        if fid is not None and self.features_NF is not None:
            out["fid"] = (fid, self.features_NF)
        if self.logits_NK is not None:
            out["inception_score"] = (inception_score_of, self.logits_NK)
        if self.correct_N is not None:
            out["class_accuracy"] = (accuracy, self.correct_N)
        return out


def resample_row(values: PerImage, fid: FrechetToReference | None, indices: np.ndarray) -> dict[str, Resampled]:
    """Every figure of a row on all images and on every resample (computed once, used for noise and differences)."""
    return {name: resample(fn, data, indices) for name, (fn, data) in values.metrics(fid).items()}


def row_noise(figures: dict[str, Resampled]) -> dict[str, dict]:
    """Every figure of a row with its bootstrap standard error."""
    return {name: r.noise().to_dict() for name, r in figures.items()}


def row_differences(a: dict[str, Resampled], b: dict[str, Resampled], z: float = Z_SIGNIFICANT) -> dict[str, dict]:
    """figure(a) - figure(b) for every figure both rows have, paired over the same image indices."""
    return {name: r.minus(b[name], z).to_dict() for name, r in a.items() if name in b}
