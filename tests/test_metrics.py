"""Quality metrics: closed-form checks of FID/IS/P&R, float64 streaming stats, offline Inception, sample I/O."""

from __future__ import annotations

import math
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

from varianttrain.evaluation.images import (
    adm_center_crop,
    load_image,
    load_png_folder,
    pack_adm_npz,
    save_png,
    to_uint8,
)
from varianttrain.evaluation.metrics import (
    INCEPTION_WEIGHT_FILES,
    GaussianStats,
    MetricsAccumulator,
    ReferenceStats,
    extract_pool_features,
    frechet_distance,
    inception_score,
    load_inception,
    load_reference_stats,
    precision_recall,
    reference_stats_from_folder,
    save_reference_stats,
)


# --------------------------------------------------------------------------------------------------------- helpers
class ToyExtractor:
    """Deterministic stand-in for Inception (the demo-mode protocol): 4×4 average-pooled pixels → F=48, K=10."""

    def __init__(self, image_size: int | None = None) -> None:
        self.image_size = image_size
        self.weight_FK = torch.randn(48, 10, generator=torch.Generator().manual_seed(0))

    def __call__(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert images_B3HW.dtype == torch.uint8
        if self.image_size is not None:
            assert images_B3HW.shape[-2:] == (self.image_size, self.image_size)
        pool_BF = F.adaptive_avg_pool2d(images_B3HW.float() / 255, 4).flatten(1)
        return pool_BF, pool_BF @ self.weight_FK


def random_spd(dim: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def random_images(n: int, size: int, seed: int, high: int = 256) -> torch.Tensor:
    return torch.randint(0, high, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------- FID
def test_fid_identical_stats_is_zero():
    mu, sigma = np.random.default_rng(0).standard_normal(64), random_spd(64, 1)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fid_diagonal_gaussians_closed_form():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    s1, s2 = rng.uniform(0.1, 3.0, 32), rng.uniform(0.1, 3.0, 32)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_fid_commuting_non_diagonal_closed_form():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute, so tr sqrt(Σ1Σ2) = Σ sqrt(a·b).
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((24, 24)))
    a, b = rng.uniform(0.1, 2.0, 24), rng.uniform(0.1, 2.0, 24)
    mu1, mu2 = rng.standard_normal(24), rng.standard_normal(24)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    got = frechet_distance(torch.tensor(mu1), q @ np.diag(a) @ q.T, mu2.astype(np.float32), q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fid_matches_torch_fidelity_eigenvalue_formula():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(20)
    stat1 = {"mu": rng.standard_normal(64), "sigma": random_spd(64, 21)}
    stat2 = {"mu": rng.standard_normal(64), "sigma": random_spd(64, 22)}
    theirs = fid_statistics_to_metric(stat1, stat2, verbose=False)["frechet_inception_distance"]
    assert frechet_distance(stat1["mu"], stat1["sigma"], stat2["mu"], stat2["sigma"]) == pytest.approx(theirs, rel=1e-9)


def test_fid_singular_covariances_stay_finite_and_shape_mismatch_raises():
    x = np.random.default_rng(4).standard_normal((5, 64))  # 5 samples in 64-d: rank-4 covariance
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    fid = frechet_distance(mu, sigma, mu, sigma)
    assert math.isfinite(fid) and abs(fid) < 1e-3 * np.trace(sigma)
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(mu, sigma, mu[:10], sigma[:10, :10])


# ------------------------------------------------------------------------------------------------------ float64 stats
def test_streaming_stats_match_numpy_on_uneven_chunks():
    x_NF = (np.random.default_rng(5).standard_normal((103, 16)) * 3 + 10).astype(np.float32)
    stats, first, second = GaussianStats(), GaussianStats(), GaussianStats()
    for lo, hi in [(0, 1), (1, 8), (8, 58), (58, 103)]:
        stats.update(torch.from_numpy(x_NF[lo:hi]))
        (first if hi <= 58 else second).update(torch.from_numpy(x_NF[lo:hi]))
    mu, sigma = stats.mean_cov()
    assert mu.dtype == sigma.dtype == np.float64 and stats.n == 103
    np.testing.assert_allclose(mu, x_NF.astype(np.float64).mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x_NF.astype(np.float64), rowvar=False), rtol=0, atol=1e-10)
    merged_mu, merged_sigma = first.merge(second).mean_cov()
    np.testing.assert_allclose(merged_sigma, sigma, rtol=0, atol=1e-12)
    restored, snapshot = GaussianStats(), stats.state_dict()
    stats.update(torch.ones(2, 16))  # the snapshot must not follow later updates
    restored.load_state_dict(snapshot)
    assert restored.n == 103
    np.testing.assert_array_equal(restored.mean_cov()[1], sigma)
    assert restored.all_reduce().n == 103  # no process group: a copy


# ---------------------------------------------------------------------------------------------------------------- IS
def test_is_uniform_logits_is_one():
    mean, std = inception_score(torch.zeros(50, 1008), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_is_confident_even_predictions_is_num_classes():
    K = 7
    logits_NK = 1000.0 * F.one_hot(torch.arange(140) % K, K).float()  # every split of 14 holds each class twice
    mean, std = inception_score(logits_NK, splits=10, shuffle=False)
    assert mean == pytest.approx(K, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # Uneven hard predictions, one split: IS = exp(H(class histogram)); histogram (2, 1, 1) of 4 samples.
    mean, _ = inception_score(1000.0 * F.one_hot(torch.tensor([0, 0, 1, 2]), 5).float(), splits=1, shuffle=False)
    p = np.array([0.5, 0.25, 0.25])
    assert mean == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)


@pytest.mark.parametrize("shuffle", [True, False])
def test_is_equals_torch_fidelity(shuffle):
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits_NK = torch.randn(503, 37, generator=torch.Generator().manual_seed(6)) * 4
    ours = inception_score(logits_NK, splits=10, shuffle=shuffle, seed=2020)
    theirs = isc_features_to_metric(logits_NK, splits=10, shuffle=shuffle, rng_seed=2020)
    assert ours[0] == pytest.approx(theirs["inception_score_mean"], rel=1e-12)
    assert ours[1] == pytest.approx(theirs["inception_score_std"], rel=1e-9, abs=1e-12)
    with pytest.raises(ValueError, match="splits"):
        inception_score(logits_NK[:5], splits=10)


# --------------------------------------------------------------------------------------------------- precision/recall
def test_precision_recall_hand_computed_1d_example():
    real, fake = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[0.5], [10.0], [10.5]])
    # k=1 squared radii: real (1, 1, 1), fake (90.25, 0.25, 0.25). Only 0.5 lies in a real ball; every real point
    # lies in the ball of fake 0.5.
    precision, recall = precision_recall(real, fake, k=1)
    assert precision == pytest.approx(1 / 3) and recall == pytest.approx(1.0)


def test_precision_recall_identical_disjoint_and_chunking():
    x_NF = torch.randn(60, 8, generator=torch.Generator().manual_seed(7))
    assert precision_recall(x_NF, x_NF.clone()) == (1.0, 1.0)
    assert precision_recall(x_NF, x_NF + 1000.0) == (0.0, 0.0)
    y_NF = torch.randn(45, 8, generator=torch.Generator().manual_seed(8)) * 1.5 + 0.5
    assert precision_recall(x_NF, y_NF, k=3, batch=7) == precision_recall(x_NF, y_NF, k=3, batch=10000)
    # Brute force from the definition.
    d_real, d_fake, d_cross = (torch.cdist(a, b) ** 2 for a, b in [(x_NF, x_NF), (y_NF, y_NF), (y_NF, x_NF)])
    r_real, r_fake = d_real.sort(1).values[:, 3], d_fake.sort(1).values[:, 3]
    precision = (d_cross <= r_real[None] + 1e-4).any(1).float().mean().item()
    recall = (d_cross <= r_fake[:, None] + 1e-4).any(0).float().mean().item()
    assert precision_recall(x_NF, y_NF, k=3) == pytest.approx((precision, recall))


# ---------------------------------------------------------------------------------------------------- accumulator
def test_accumulator_resume_and_index_order_give_identical_results():
    images = random_images(40, 16, seed=9)
    indices = torch.randperm(40, generator=torch.Generator().manual_seed(10))
    full = MetricsAccumulator(ToyExtractor(), keep_features=True, batch_size=8)
    full.update(images)
    first = MetricsAccumulator(ToyExtractor(), keep_features=True)
    first.update(images[indices[:17]], indices[:17])  # fed in shuffled order, with global indices
    resumed = MetricsAccumulator(ToyExtractor(), keep_features=True)
    resumed.load_state_dict(first.state_dict())
    resumed.update(images[indices[17:]], indices[17:])
    ref = ReferenceStats(*full.stats.mean_cov())
    ref_features_NF = extract_pool_features(ToyExtractor(), [images[:10], images[10:]])
    assert torch.equal(ref_features_NF, full.state_dict()["features"])
    a, b = full.compute(ref, ref_features_NF=ref_features_NF), resumed.compute(ref)
    assert a["num_samples"] == b["num_samples"] == 40 and abs(a["fid"]) < 1e-6 and abs(b["fid"]) < 1e-6
    assert a["inception_score_mean"] == pytest.approx(b["inception_score_mean"], rel=1e-6)
    assert a["precision"] == a["recall"] == 1.0
    with pytest.raises(ValueError, match="indices"):
        resumed.update(images[:2])
    duplicated = MetricsAccumulator(ToyExtractor())
    duplicated.update(images[:20], torch.arange(20))
    duplicated.update(images[:20], torch.arange(20))
    with pytest.raises(ValueError, match="duplicated"):
        duplicated.compute()
    with pytest.raises(ValueError, match="uint8"):
        full.update(images.float())


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, rank1_empty: bool) -> None:
    # Forked after the parent used OpenMP threads: libgomp is not fork-safe, a multi-threaded op in the child can
    # hang forever (seen here). One thread per process avoids the pool (and suits a 2-core machine).
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        images = random_images(30, 16, seed=11)
        # Strided sharding (interleaved order), or everything on rank 0 (fewer samples than ranks).
        mine = torch.arange(30) if rank1_empty and rank == 0 else torch.arange(rank, 30, world)
        acc = MetricsAccumulator(ToyExtractor())
        if not (rank1_empty and rank == 1):
            acc.update(images[mine[:4]], mine[:4])
            acc.update(images[mine[4:]], mine[4:])
        ref = ReferenceStats(np.zeros(48), np.eye(48))
        result = acc.compute(ref)
        if rank == 0:
            torch.save(result, Path(out_dir) / "result.pt")
        else:
            assert result is None
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
@pytest.mark.parametrize("rank1_empty", [False, True])
def test_accumulator_two_process_gloo_equals_single_process(tmp_path, rank1_empty):
    context = torch.multiprocessing.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "pg"), str(tmp_path), rank1_empty),
        nprocs=2,
        join=False,
        start_method="fork",
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 120 s")
    single = MetricsAccumulator(ToyExtractor())
    single.update(random_images(30, 16, seed=11), torch.arange(30))
    expected = single.compute(ReferenceStats(np.zeros(48), np.eye(48)))
    got = torch.load(tmp_path / "result.pt", weights_only=False)
    assert got["num_samples"] == 30
    assert got["fid"] == pytest.approx(expected["fid"], rel=1e-9)
    assert got["inception_score_mean"] == pytest.approx(expected["inception_score_mean"], rel=1e-6)


# ------------------------------------------------------------------------------------------------------- Inception
def test_load_inception_missing_file_names_both_files(tmp_path, monkeypatch):
    import torch.hub

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))
    missing = tmp_path / "checkpoints" / INCEPTION_WEIGHT_FILES[0]
    for path in (None, missing):
        with pytest.raises(FileNotFoundError) as err:
            load_inception(path)
        message = str(err.value)
        assert all(name in message for name in INCEPTION_WEIGHT_FILES)
        assert "--inception-weights" in message and "checkpoints/" in message
    assert str(missing) in message


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> Path:
    """Random-weight stand-in for the real file (docs/REFERENCES.md L10): same class, keys and format (95.7 MB)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class NoWeights(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # construction would otherwise load the (empty) file strictly
            return None

    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHT_FILES[0]
    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    net = NoWeights("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(empty))
    torch.manual_seed(12)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):  # default init makes activations vanish → every FID ≈ 1e-12
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def _block_network(monkeypatch) -> None:
    import torch.hub

    real_connect = socket.socket.connect

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"network access blocked in tests: {address}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("tried to download"))


def test_load_inception_from_file_offline(random_inception_weights, monkeypatch):
    _block_network(monkeypatch)
    extractor = load_inception(random_inception_weights, "cpu")
    saved = torch.load(random_inception_weights, weights_only=True)
    assert torch.equal(extractor.Mixed_7c.branch_pool.conv.weight, saved["Mixed_7c.branch_pool.conv.weight"])
    pool_BF, logits_BK = extractor(random_images(2, 64, seed=23))  # resized to 299 inside the extractor
    assert pool_BF.shape == (2, 2048) and logits_BK.shape == (2, 1008) and pool_BF.dtype == torch.float32
    assert torch.isfinite(logits_BK).all() and pool_BF.std() > 1e-3  # Kaiming init: activations did not vanish


@pytest.mark.slow  # > 20 s on 2 cores: 16 images through Inception + two 2048² sqrtm (128 s measured, shared machine)
def test_random_inception_end_to_end_offline(random_inception_weights, monkeypatch):
    start = time.perf_counter()
    _block_network(monkeypatch)
    extractor = load_inception(random_inception_weights, "cpu")

    acc_a, acc_b = MetricsAccumulator(extractor, batch_size=4), MetricsAccumulator(extractor, batch_size=4)
    acc_a.update(random_images(8, 256, seed=13))
    acc_b.update(random_images(8, 256, seed=14, high=128))
    stats_a = ReferenceStats(*acc_a.stats.mean_cov())
    stats_b = ReferenceStats(*acc_b.stats.mean_cov())
    assert stats_a.mu.shape == (2048,) and acc_a._logits[0].shape == (4, 1008)

    result = acc_a.compute(stats_a, is_splits=2)
    # 8 samples in 2048-d: rank-7 covariances, sqrtm is ill-conditioned; zero up to 1e-5 of the total variance.
    assert abs(result["fid"]) < 1e-5 * np.trace(stats_a.sigma)
    assert 1.0 - 1e-9 <= result["inception_score_mean"] < math.inf
    fid_ab = frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)
    assert fid_ab > 1e3 * abs(result["fid"])
    print(f"random-Inception end-to-end: {time.perf_counter() - start:.1f} s")


def test_load_inception_rejects_wrong_state_dict(tmp_path):
    bad = tmp_path / "not_inception.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    with pytest.raises(RuntimeError, match="not_inception.pth"):
        load_inception(bad)


# ------------------------------------------------------------------------------------------------ reference stats
def test_reference_stats_round_trip_and_adm_layout(tmp_path):
    rng = np.random.default_rng(15)
    stats = ReferenceStats(rng.standard_normal(8), random_spd(8, 16), num_samples=123)
    path = save_reference_stats(tmp_path / "ref_stats", stats)  # no .npz suffix: written at exactly this path
    assert path == tmp_path / "ref_stats" and not list(tmp_path.glob("*.tmp"))
    loaded = load_reference_stats(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.num_samples == 123

    adm = tmp_path / "VIRTUAL_imagenet256_labeled.npz"  # ADM layout: images + float64 stats + spatial stats
    np.savez(adm, arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=stats.mu.astype(np.float32), sigma=stats.sigma,
             mu_s=np.zeros(3), sigma_s=np.eye(3))  # fmt: skip
    loaded = load_reference_stats(adm)
    assert loaded.mu.dtype == loaded.sigma.dtype == np.float64 and loaded.num_samples is None
    np.testing.assert_allclose(loaded.mu, stats.mu, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="guided-diffusion") as err:
        load_reference_stats(tmp_path / "VIRTUAL_imagenet256_labeled_missing.npz")
    assert "VIRTUAL_imagenet256_labeled_missing.npz" in str(err.value)
    np.savez(tmp_path / "samples.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        load_reference_stats(tmp_path / "samples.npz")


def test_reference_stats_from_png_folder_uses_adm_center_crop(tmp_path):
    rng = np.random.default_rng(17)
    sizes = [(256, 256), (320, 256), (600, 520), (300, 700), (256, 400)]  # PIL (W, H)
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in sizes]
    for i, arr in enumerate(arrays):
        Image.fromarray(arr).save(tmp_path / f"{i:02d}.png")
    Image.fromarray(arrays[1]).save(tmp_path / "05.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("ignored")

    ref = reference_stats_from_folder(tmp_path, ToyExtractor(image_size=64), batch_size=4, image_size=64)
    crops = [adm_center_crop(Image.open(p), 64) for p in sorted(tmp_path.glob("*.[pj][np]g"))]
    feats_NF = ToyExtractor()(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))[0].double().numpy()
    assert ref.num_samples == 6
    np.testing.assert_allclose(ref.mu, feats_NF.mean(0), atol=1e-12)
    np.testing.assert_allclose(ref.sigma, np.cov(feats_NF, rowvar=False), atol=1e-12)


def test_adm_center_crop_rule():
    arr = np.random.default_rng(18).integers(0, 256, (256, 320, 3), dtype=np.uint8)
    # short side already 256: no resize, crop offset (320 − 256) // 2 = 32 along the width.
    np.testing.assert_array_equal(adm_center_crop(Image.fromarray(arr), 256), arr[:, 32:288])
    big = Image.fromarray(np.zeros((1100, 600, 3), np.uint8))  # BOX-halved once (600 ≥ 512), then bicubic to 256
    assert adm_center_crop(big, 256).shape == (256, 256, 3)


# ------------------------------------------------------------------------------------------------------ images I/O
def test_to_uint8_rules():
    x = torch.tensor([-0.2, 0.0, 0.4 / 255, 0.6 / 255, 1.5 / 255, 254.5 / 255, 1.0, 1.3]).view(1, 8, 1)
    assert to_uint8(x, "truncate").flatten().tolist() == [0, 0, 0, 0, 1, 254, 255, 255]
    assert to_uint8(x, "round").flatten().tolist() == [0, 0, 0, 1, 2, 255, 255, 255]
    assert to_uint8(x.bfloat16()).dtype == torch.uint8
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="float"):
        to_uint8(torch.zeros(3, 2, 2, dtype=torch.uint8))


def test_png_round_trip_and_adm_npz_packing(tmp_path):
    imgs_N3HW = random_images(5, 16, seed=19)[:, :, :12]  # H=12, W=16: catches HW swaps
    for i, img in enumerate(imgs_N3HW):
        save_png(tmp_path / f"{i:05d}.png", img)
    loaded = load_png_folder(tmp_path)
    assert torch.equal(loaded, imgs_N3HW) and torch.equal(load_image(tmp_path / "00003.png"), imgs_N3HW[3])

    out = pack_adm_npz(tmp_path, tmp_path / "samples.npz", expected_count=5, labels=[3, 1, 4, 1, 5])
    with np.load(out) as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        assert npz["arr_0"].dtype == np.uint8 and npz["arr_0"].shape == (5, 12, 16, 3)
        np.testing.assert_array_equal(npz["arr_0"], imgs_N3HW.permute(0, 2, 3, 1).numpy())
        assert npz["arr_1"].tolist() == [3, 1, 4, 1, 5]
    paths = sorted(tmp_path.glob("*.png"))[::-1]
    with np.load(pack_adm_npz(paths, tmp_path / "reversed.npz")) as npz:
        assert npz.files == ["arr_0"] and np.array_equal(npz["arr_0"][0], npz["arr_0"][0])
        np.testing.assert_array_equal(npz["arr_0"][0], imgs_N3HW[4].permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="expected 50000"):
        pack_adm_npz(tmp_path, tmp_path / "bad.npz", expected_count=50000)
    assert not (tmp_path / "bad.npz").exists() and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="shape"):
        pack_adm_npz(tmp_path, tmp_path / "bad.npz", labels=[1, 2])
