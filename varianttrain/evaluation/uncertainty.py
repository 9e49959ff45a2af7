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


def bootstrap(metric: MetricFn, data: np.ndarray, indices: np.ndarray) -> NoiseEstimate:
    """The metric on all images and its standard error over the resamples `indices` (rows of image indices)."""
    values = np.array([metric(data[rows]) for rows in indices])
    return NoiseEstimate(float(metric(data)), float(values.std(ddof=1)), len(indices))


def paired_difference(metric: MetricFn, data_a: np.ndarray, data_b: np.ndarray, indices: np.ndarray,
                      z: float = Z_SIGNIFICANT) -> PairedDifference:
    """metric(a) - metric(b) with the same resampled image indices on both sides (a[i] and b[i] share a seed)."""
    if len(data_a) != len(data_b):
        raise ValueError(f"paired data must have the same images: {len(data_a)} vs {len(data_b)} rows")
    diffs = np.array([metric(data_a[rows]) - metric(data_b[rows]) for rows in indices])
    diff = float(metric(data_a) - metric(data_b))
    se = float(diffs.std(ddof=1))
    return PairedDifference(diff, se, bool(abs(diff) > z * se))


# ------------------------------------------------------------------------------------------------------ metrics
def accuracy(correct_N: np.ndarray) -> float:
    """Share of images whose predicted class is the requested one, in percent."""
    return float(100.0 * np.mean(correct_N))


class FrechetToReference:
    """FID of a feature set against fixed reference statistics, fast enough to evaluate per bootstrap round."""

    def __init__(self, mu_ref: np.ndarray, sigma_ref: np.ndarray):
        self.mu_ref = np.asarray(mu_ref, dtype=np.float64)
        sigma_ref = np.asarray(sigma_ref, dtype=np.float64)
        w, v = np.linalg.eigh((sigma_ref + sigma_ref.T) / 2)
        self.root_ref = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S_ref^(1/2), symmetric PSD
        self.trace_ref = float(np.trace(sigma_ref))

    def __call__(self, features_NF: np.ndarray) -> float:
        feats = np.asarray(features_NF, dtype=np.float64)
        mu = feats.mean(axis=0)
        sigma = np.cov(feats, rowvar=False, ddof=1)
        inner = self.root_ref @ np.atleast_2d(sigma) @ self.root_ref
        eig = np.linalg.eigvalsh((inner + inner.T) / 2)
        diff = mu - self.mu_ref
        trace_root = np.sqrt(np.clip(eig, 0, None)).sum()  # tr sqrt(S_ref S)
        return float(diff @ diff + self.trace_ref + np.trace(np.atleast_2d(sigma)) - 2 * trace_root)


def inception_score_of(logits_NK: np.ndarray) -> float:
    """IS of one set (a single split): exp(E_x KL(p(y|x) || p(y))), softmax in float64."""
    logits = np.asarray(logits_NK, dtype=np.float64)
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    p = np.exp(log_p)
    log_q = np.log(p.mean(axis=0, keepdims=True))
    kl = np.where(p > 0, p * (log_p - log_q), 0.0).sum(axis=1)
    return float(np.exp(kl.mean()))
