"""Bootstrap noise estimates against closed forms (binomial, paired binomial, delta method) and exact metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from varianttrain.evaluation.metrics import frechet_distance, inception_score
from varianttrain.evaluation.uncertainty import (
    FrechetToReference,
    PerImage,
    accuracy,
    bootstrap,
    bootstrap_indices,
    inception_score_of,
    paired_difference,
    resample_row,
    row_differences,
    row_noise,
)


def test_accuracy_standard_error_matches_the_binomial_closed_form():
    rng = np.random.default_rng(1)
    n, p = 2000, 0.3
    correct = rng.random(n) < p
    est = bootstrap(accuracy, correct, bootstrap_indices(n, 600, seed=2))
    p_hat = correct.mean()
    closed = 100 * math.sqrt(p_hat * (1 - p_hat) / n)
    assert est.value == pytest.approx(100 * p_hat)
    assert est.se == pytest.approx(closed, rel=0.1)


def test_paired_difference_matches_the_paired_binomial_closed_form_and_beats_unpaired():
    rng = np.random.default_rng(3)
    n = 3000
    a = rng.random(n) < 0.7
    flip = rng.random(n) < 0.1  # b differs from a on ~10 % of the images (same seeds, mostly same outcome)
    b = np.where(flip, ~a, a)
    idx = bootstrap_indices(n, 600, seed=4)
    paired = paired_difference(accuracy, a, b, idx)
    d = a.astype(float) - b.astype(float)
    closed = 100 * math.sqrt(((d ** 2).mean() - d.mean() ** 2) / n)
    assert paired.difference == pytest.approx(100 * d.mean())
    assert paired.se == pytest.approx(closed, rel=0.1)
    unpaired = math.hypot(bootstrap(accuracy, a, idx).se, bootstrap(accuracy, b, idx).se)
    assert paired.se < 0.5 * unpaired


def test_significance_flag_uses_two_standard_errors():
    # Paired: what counts is how many images change and in which direction, not the overall accuracy.
    n = 1000
    a = np.zeros(n, dtype=bool)
    a[:600] = True
    b = a.copy()
    b[:6] = False  # 6 images lost, 4 gained: 0.2 points apart, inside the paired noise (~0.3 points)
    b[600:604] = True
    idx = bootstrap_indices(n, 300, seed=0)
    assert not paired_difference(accuracy, a, b, idx).significant
    c = a.copy()
    c[:200] = False  # 20 points apart
    assert paired_difference(accuracy, a, c, idx).significant


def test_fast_fid_equals_the_reference_implementation():
    rng = np.random.default_rng(5)
    feats = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    ref = rng.normal(size=(500, 16)) * 1.3 + 0.2
    mu_r, sigma_r = ref.mean(0), np.cov(ref, rowvar=False)
    fast = FrechetToReference(mu_r, sigma_r)(feats)
    exact = frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu_r, sigma_r)
    assert fast == pytest.approx(exact, rel=1e-6)


def test_fid_standard_error_matches_the_delta_method_in_one_dimension():
    # 1-D: FID = (m - mu_r)^2 + (s - sigma_r)^2; var(m) = sigma^2 / n, var(s) ~ sigma^2 / (2 n) for a Gaussian.
    rng = np.random.default_rng(7)
    n, mu, sigma, mu_r, sigma_r = 4000, 1.0, 1.5, 0.0, 1.0
    x = rng.normal(mu, sigma, size=(n, 1))
    est = bootstrap(FrechetToReference(np.array([mu_r]), np.array([[sigma_r ** 2]])), x,
                    bootstrap_indices(n, 400, seed=8))
    m, s = x.mean(), x.std(ddof=1)
    delta = math.sqrt((2 * (m - mu_r)) ** 2 * s ** 2 / n + (2 * (s - sigma_r)) ** 2 * s ** 2 / (2 * n))
    assert est.value == pytest.approx((m - mu_r) ** 2 + (s - sigma_r) ** 2, rel=1e-9)
    assert est.se == pytest.approx(delta, rel=0.15)


def test_single_split_inception_score_matches_the_metrics_module():
    logits = np.random.default_rng(9).normal(size=(300, 10)) * 3
    assert inception_score_of(logits) == pytest.approx(inception_score(logits, splits=1, shuffle=False)[0], rel=1e-9)


def test_bootstrap_needs_two_images_and_two_rounds():
    with pytest.raises(ValueError, match="needs >= 2 images"):
        bootstrap_indices(1, 10)


def test_row_figures_computed_once_give_the_same_noise_and_differences_as_recomputing():
    rng = np.random.default_rng(5)
    a = PerImage(correct_N=rng.random(300) < 0.7, logits_NK=rng.normal(size=(300, 10)))
    b = PerImage(correct_N=rng.random(300) < 0.6, logits_NK=rng.normal(size=(300, 10)))
    idx = bootstrap_indices(300, 50, seed=1)
    fa, fb = resample_row(a, None, idx), resample_row(b, None, idx)
    assert row_noise(fa)["class_accuracy"] == bootstrap(accuracy, a.correct_N, idx).to_dict()
    diff = row_differences(fa, fb)["inception_score"]
    assert diff == paired_difference(inception_score_of, a.logits_NK, b.logits_NK, idx).to_dict()
    assert row_differences(fa, fa)["class_accuracy"] == {"difference": 0.0, "se": 0.0, "significant": False}
