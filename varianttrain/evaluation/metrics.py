"""FID, Inception Score and improved precision/recall, computed offline and distributed-aware.

Pipeline ([FID], [IS], [PR] in docs/REFERENCES.md): ``uint8`` samples → feature extractor (torch-fidelity's
TF-compatible Inception, or any callable of the :class:`FeatureExtractor` protocol, e.g. the demo-mode classifier) →
float64 streaming Gaussian statistics for FID + logits for IS (+ optional pool features for precision/recall) → metrics
against reference ``mu``/``sigma`` (the ADM reference batch). torch-fidelity is used only for the network itself;
statistics and metrics are computed here with the low-level route (docs/REFERENCES.md L13), which avoids its cache, its
float32-``mu`` dtype assert and its silently ignored keyword arguments.

Tensor names carry their layout: ``B`` batch, ``N`` samples, ``F`` feature width (2048 for Inception pool_3),
``K`` classes (1008 for Inception ``logits_unbiased``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist

from varianttrain.evaluation.images import IMAGE_EXTENSIONS, list_images, load_image

INCEPTION_WEIGHT_FILES: tuple[str, ...] = (
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity releases v0.2.0
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid releases (same weights and key names: REFERENCES.md L10)
)
ADM_REFERENCE_BATCH = "VIRTUAL_imagenet256_labeled.npz"
ADM_REFERENCE_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/imagenet/256/" + ADM_REFERENCE_BATCH
)


class FeatureExtractor(Protocol):
    """Maps ``uint8`` RGB images ``(B, 3, H, W)`` to ``(pool_features (B, F), logits (B, K))``, both float.

    torch-fidelity's ``FeatureExtractorInceptionV3`` with ``["2048", "logits_unbiased"]`` satisfies it (F=2048,
    K=1008); so does the demo-mode classifier. Nothing here assumes particular F or K.
    """

    def __call__(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


# ----------------------------------------------------------------------------------------------------------- Inception
def load_inception(weights_path: str | os.PathLike | None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """torch-fidelity's TF-compatible Inception (``inception-v3-compat``), pool_3 + unbiased logits, from a file.

    Never downloads: torch-fidelity falls back to ``torch.hub.load_state_dict_from_url`` only when its weights path
    is ``None`` (docs/REFERENCES.md L10), and this function never passes ``None``.

    Args:
        weights_path: the 2015-12-05 Inception state dict (either file name of :data:`INCEPTION_WEIGHT_FILES`).
        device: where to put the network.

    Raises:
        FileNotFoundError: no path or no such file; the message lists the accepted files and where to put them.
        RuntimeError: the file is not an Inception state dict of the expected architecture.
    """
    if weights_path is None or not Path(weights_path).is_file():
        expected = "no path given" if weights_path is None else f"{weights_path} does not exist"
        raise FileNotFoundError(
            f"Inception weights not found ({expected}). FID/IS need the 2015-12-05 TF Inception weights in PyTorch "
            f"format: {INCEPTION_WEIGHT_FILES[0]} (torch-fidelity releases v0.2.0) or {INCEPTION_WEIGHT_FILES[1]} "
            "(pytorch-fid releases). Copy one of them into checkpoints/ and pass its path with --inception-weights "
            "(config key eval.inception_weights). Nothing is downloaded at run time (docs/EVALUATION.md)."
        )
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        extractor = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights_path)
        )
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise RuntimeError(
            f"{weights_path} is not a state dict of torch-fidelity's inception-v3-compat network "
            f"(expected {INCEPTION_WEIGHT_FILES[0]} or {INCEPTION_WEIGHT_FILES[1]}): {err}"
        ) from err
    return extractor.to(device).eval()


@contextmanager
def _strict_fp32(device: torch.device) -> Iterator[None]:
    """Run CUDA convolutions/matmuls in true float32, not TF32, and restore the global flags afterwards.

    PyTorch lets cuDNN convolutions use TF32 by default (and train.py may enable it for matmuls); TF32 perturbs
    Inception features by ~1e-3 relative, far more than the 1e-4 agreement torch-fidelity documents against the
    float32 TensorFlow graph (docs/REFERENCES.md L15), so the extractor is always run without it.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32, matmul.allow_tf32 = False, False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


# --------------------------------------------------------------------------------------------------- distributed utils
def _dist_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _comm_device() -> torch.device:
    """NCCL only moves CUDA tensors; every other backend is used with CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _max_over_ranks(value: int) -> int:
    """Largest ``value`` over ranks: lets a rank that saw no sample learn the feature/logit widths."""
    if not _dist_ready():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _gather_rows_to_rank0(x_NK: torch.Tensor) -> torch.Tensor | None:
    """Concatenate every rank's rows in rank order on rank 0 (``None`` elsewhere); row counts may differ."""
    if not _dist_ready():
        return x_NK
    device = _comm_device()
    world = dist.get_world_size()
    count = torch.tensor([x_NK.shape[0]], device=device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts_list = [int(c.item()) for c in counts]
    padded = x_NK.new_zeros((max(counts_list), *x_NK.shape[1:])).to(device)
    padded[: x_NK.shape[0]] = x_NK.to(device)
    # all_gather rather than gather: it works on every backend and version; the extra memory is small (≤ 0.4 GB).
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    if dist.get_rank() != 0:
        return None
    return torch.cat([p[:c] for p, c in zip(parts, counts_list, strict=True)]).to(x_NK.device)


# ------------------------------------------------------------------------------------------------------ Gaussian stats
class GaussianStats:
    """Streaming float64 sums ``n``, ``Σx`` (F,), ``Σxxᵀ`` (F, F) of feature vectors (docs/REFERENCES.md L13).

    Sums (not running means) so that ranks and resumed runs combine by plain addition; float64 so that 50 000
    float32 features lose nothing (the torchmetrics algebra).
    """

    def __init__(self, num_features: int | None = None, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.n = 0
        self.sum_F: torch.Tensor | None = None
        self.sum_FF: torch.Tensor | None = None
        if num_features is not None:
            self._allocate(num_features)

    def _allocate(self, num_features: int) -> None:
        self.sum_F = torch.zeros(num_features, dtype=torch.float64, device=self.device)
        self.sum_FF = torch.zeros(num_features, num_features, dtype=torch.float64, device=self.device)

    @property
    def num_features(self) -> int | None:
        return None if self.sum_F is None else self.sum_F.shape[0]

    def update(self, features_BF: torch.Tensor) -> None:
        """Add a batch of feature vectors ``(B, F)``."""
        if features_BF.dim() != 2:
            raise ValueError(f"features must be (B, F), got {tuple(features_BF.shape)}")
        if self.sum_F is None:
            self._allocate(features_BF.shape[1])
        if features_BF.shape[1] != self.num_features:
            raise ValueError(f"feature width {features_BF.shape[1]} != accumulated width {self.num_features}")
        x_BF = features_BF.detach().to(self.device, torch.float64)
        self.n += x_BF.shape[0]
        self.sum_F += x_BF.sum(dim=0)
        self.sum_FF += x_BF.T @ x_BF

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Add another accumulator's sums into this one (in place); returns ``self``."""
        if other.sum_F is None:
            return self
        if self.sum_F is None:
            self._allocate(other.num_features)
        if other.num_features != self.num_features:
            raise ValueError(f"cannot merge width {other.num_features} into width {self.num_features}")
        self.n += other.n
        self.sum_F += other.sum_F.to(self.device)
        self.sum_FF += other.sum_FF.to(self.device)
        return self

    def all_reduce(self) -> GaussianStats:
        """Sums over all ranks as a **new** accumulator (this one keeps its per-rank sums, so it stays resumable).

        Collective: every rank must call it, with the same feature width. Without an initialised process group it
        returns a copy.
        """
        out = GaussianStats(device=self.device).merge(self)
        if not _dist_ready():
            return out
        width = _max_over_ranks(out.num_features or 0)
        if out.sum_F is None and width > 0:  # this rank saw no sample (fewer samples than ranks): contribute zeros
            out._allocate(width)
        if out.num_features != width:
            raise ValueError(f"feature width {out.num_features} on rank {dist.get_rank()}, {width} on another rank")
        device = _comm_device()
        for name in ("sum_F", "sum_FF"):
            t = getattr(out, name).to(device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            setattr(out, name, t.to(out.device))
        n = torch.tensor([out.n], dtype=torch.int64, device=device)
        dist.all_reduce(n, op=dist.ReduceOp.SUM)
        out.n = int(n.item())
        return out

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu (F,), sigma (F, F))`` float64 numpy; ``sigma`` is the unbiased covariance, like ``np.cov``."""
        if self.n < 2:
            raise ValueError(f"need at least 2 samples for a covariance, have {self.n}")
        mu_F = self.sum_F / self.n
        sigma_FF = (self.sum_FF - self.n * torch.outer(mu_F, mu_F)) / (self.n - 1)
        return mu_F.cpu().numpy(), sigma_FF.cpu().numpy()

    def state_dict(self) -> dict:
        """A snapshot (CPU copies) of the count and sums, for checkpointing an interrupted evaluation (per rank)."""
        return {
            "n": self.n,
            "sum_F": None if self.sum_F is None else self.sum_F.detach().cpu().clone(),
            "sum_FF": None if self.sum_FF is None else self.sum_FF.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore from :meth:`state_dict` (copies, so the dict can be reused)."""
        self.n = int(state["n"])
        for name in ("sum_F", "sum_FF"):
            t = state[name]
            setattr(self, name, None if t is None else t.to(self.device, torch.float64, copy=True))


# --------------------------------------------------------------------------------------------------------------- FID
def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance ``‖mu1−mu2‖² + tr(Σ1) + tr(Σ2) − 2·tr(sqrtm(Σ1Σ2))`` in float64.

    Same algorithm as ADM's ``FIDStatistics.frechet_distance`` / pytorch-fid (``scipy.linalg.sqrtm``): when the
    product is numerically singular (non-finite root), ``eps`` is added to both diagonals; an imaginary part larger
    than 1e-3 on the diagonal is an error, a smaller one is numerical noise and dropped. Inputs may be numpy arrays
    or tensors of any float dtype; all are cast to float64 (docs/REFERENCES.md L14: ADM stores float64).
    """
    from scipy import linalg

    mu1, mu2 = (np.atleast_1d(np.asarray(_to_numpy(m), dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(_to_numpy(s), dtype=np.float64)) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(
            f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape} "
            "(reference computed with a different feature extractor?)"
        )
    diff = mu1 - mu2
    # scipy ≥ 1.16 deprecates sqrtm(disp=False); check finiteness ourselves, as ADM does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "matrix is singular": handled by the fallback below
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"FID: singular product; adding {eps} to the diagonal of both covariances", stacklevel=2)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrtm(sigma1 @ sigma2)")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


# ---------------------------------------------------------------------------------------------------------------- IS
def inception_score(logits_NK, splits: int = 10, shuffle: bool = True, seed: int = 2020) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` over ``splits`` from logits, as torch-fidelity's ``isc_features_to_metric``.

    Softmax in float64; split ``i`` is rows ``[i·N//splits, (i+1)·N//splits)``; with ``shuffle`` the rows are first
    permuted by ``np.random.RandomState(seed)`` (torch-fidelity defaults: shuffle, seed 2020). ``shuffle=False``
    with 50 000 samples and 10 splits gives ADM's consecutive 5 000-sample splits. ``std`` is the population std.
    Terms with ``p = 0`` (softmax underflow) count as 0 (the limit of ``p·log p``) instead of producing NaN.
    """
    logits_NK = torch.as_tensor(_to_numpy(logits_NK))
    if logits_NK.dim() != 2:
        raise ValueError(f"logits must be (N, K), got {tuple(logits_NK.shape)}")
    N = logits_NK.shape[0]
    if N < splits:
        raise ValueError(f"need at least {splits} samples for {splits} splits, have {N}")
    if shuffle:
        logits_NK = logits_NK[torch.from_numpy(np.random.RandomState(seed).permutation(N))]
    logits_NK = logits_NK.double()
    p_NK = logits_NK.softmax(dim=1)
    log_p_NK = logits_NK.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        lo, hi = i * N // splits, (i + 1) * N // splits
        p, log_p = p_NK[lo:hi], log_p_NK[lo:hi]
        log_q_1K = p.mean(dim=0, keepdim=True).log()
        kl_terms = torch.where(p > 0, p * (log_p - log_q_1K), torch.zeros_like(p))
        scores.append(kl_terms.sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


# -------------------------------------------------------------------------------------------------- precision/recall
def _sq_dists(a_RF: torch.Tensor, b_CF: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(R, C)``, as the Kynkäänniemi/ADM code (float32 here; ADM tries float16)."""
    d_RC = (a_RF * a_RF).sum(1, keepdim=True) - 2 * a_RF @ b_CF.T + (b_CF * b_CF).sum(1)[None, :]
    return d_RC.clamp_(min=0)


def _knn_radii(feats_NF: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Squared distance of every row to its k-th nearest neighbour in the same set (the row itself counts as 0th)."""
    N = feats_NF.shape[0]
    if N <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, have {N}")
    radii_N = torch.empty(N, dtype=torch.float32, device=feats_NF.device)
    for r0 in range(0, N, batch):
        rows = feats_NF[r0 : r0 + batch]
        best_Rk = None  # running k+1 smallest distances: memory stays (batch, batch), never (batch, N)
        for c0 in range(0, N, batch):
            d_RC = _sq_dists(rows, feats_NF[c0 : c0 + batch])
            cand = d_RC if best_Rk is None else torch.cat([best_Rk, d_RC], dim=1)
            best_Rk = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        radii_N[r0 : r0 + rows.shape[0]] = best_Rk[:, k]
    return radii_N


def precision_recall(
    real_feats_NF: torch.Tensor, fake_feats_MF: torch.Tensor, k: int = 3, batch: int = 10000
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds, as in the ADM evaluator.

    precision = fraction of fake samples inside some real sample's k-NN ball; recall = fraction of real samples
    inside some fake sample's ball. Distances are squared Euclidean in float32 (ADM computes them in float16 with a
    float32 fallback, so borderline cases may differ). Work is chunked in ``batch × batch`` blocks (10 000² float32
    = 0.4 GB), so 50 000 × 2048 features fit on one GPU; runs on the device of ``real_feats_NF``.
    """
    device = real_feats_NF.device
    real = real_feats_NF.to(device, torch.float32)
    fake = fake_feats_MF.to(device, torch.float32)
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(real.shape)} vs {tuple(fake.shape)}")
    radii_real_N = _knn_radii(real, k, batch)
    radii_fake_M = _knn_radii(fake, k, batch)
    fake_in_M = torch.zeros(fake.shape[0], dtype=torch.bool, device=device)
    real_in_N = torch.zeros(real.shape[0], dtype=torch.bool, device=device)
    for f0 in range(0, fake.shape[0], batch):
        for r0 in range(0, real.shape[0], batch):
            d_MN = _sq_dists(fake[f0 : f0 + batch], real[r0 : r0 + batch])
            fake_in_M[f0 : f0 + batch] |= (d_MN <= radii_real_N[None, r0 : r0 + batch]).any(dim=1)
            real_in_N[r0 : r0 + batch] |= (d_MN <= radii_fake_M[f0 : f0 + batch, None]).any(dim=0)
    return fake_in_M.float().mean().item(), real_in_N.float().mean().item()


@torch.no_grad()
def extract_pool_features(
    extractor: FeatureExtractor, batches: Iterable[torch.Tensor], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Pool features ``(N, F)`` float32 on CPU of ``uint8`` batches (e.g. ADM ``arr_0`` for precision/recall).

    Runs the extractor exactly as :class:`MetricsAccumulator` does (no TF32), so reference and sample features
    are computed alike.
    """
    device = torch.device(device)
    feats = []
    for images_B3HW in batches:
        with _strict_fp32(device):
            feats.append(extractor(images_B3HW.to(device))[0].float().cpu())
    return torch.cat(feats)


# ----------------------------------------------------------------------------------------------- reference statistics
@dataclass(frozen=True)
class ReferenceStats:
    """FID reference statistics: ``mu (F,)``, ``sigma (F, F)`` float64, and the sample count when known."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int | None = None


def load_reference_stats(path: str | os.PathLike) -> ReferenceStats:
    """Read ``mu``/``sigma`` from the ADM reference batch or from a file written by :func:`save_reference_stats`.

    Only ``mu`` and ``sigma`` are read (``np.load`` of an ``.npz`` is lazy, so ADM's 10 000 ``arr_0`` images and
    spatial ``mu_s``/``sigma_s`` are never loaded). ADM's stored ``mu/sigma`` are **not** the statistics of its
    ``arr_0`` images (docs/REFERENCES.md L14), so they are never recomputed from them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID reference statistics {path} not found. For ImageNet 256x256 use ADM's reference batch "
            f"{ADM_REFERENCE_BATCH} (download link in the openai/guided-diffusion evaluations/README.md: "
            f"{ADM_REFERENCE_URL}) copied into data/, or write a small npz with mu/sigma via save_reference_stats; "
            "pass it with --ref-stats (config key eval.ref_stats)."
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); expected keys 'mu' and 'sigma'") from err
    if not hasattr(npz, "files"):  # a plain .npy array
        raise ValueError(f"{path} is a .npy array, expected an .npz with keys 'mu' and 'sigma'")
    with npz:
        keys = list(npz.files)
        if "mu" not in keys or "sigma" not in keys:
            hint = ""
            if "arr_0" in keys:
                hint = " (an ADM *sample* batch? compute its statistics from the images instead)"
            raise ValueError(f"{path} has keys {keys}, expected 'mu' and 'sigma'{hint}")
        mu, sigma = npz["mu"].astype(np.float64), npz["sigma"].astype(np.float64)
        num_samples = int(npz["num_samples"]) if "num_samples" in keys else None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu {mu.shape} / sigma {sigma.shape} are not (F,) / (F, F)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: mu/sigma contain NaN or inf")
    return ReferenceStats(mu, sigma, num_samples)


def save_reference_stats(path: str | os.PathLike, stats: ReferenceStats | GaussianStats) -> Path:
    """Write ``mu``, ``sigma`` (float64) and ``num_samples`` to an ``.npz`` at exactly ``path`` (atomic rename)."""
    if isinstance(stats, GaussianStats):
        mu, sigma = stats.mean_cov()
        stats = ReferenceStats(mu, sigma, stats.n)
    path = Path(path)
    tmp_path = path.with_name(path.name + ".tmp")
    arrays = {"mu": np.asarray(stats.mu, np.float64), "sigma": np.asarray(stats.sigma, np.float64)}
    if stats.num_samples is not None:
        arrays["num_samples"] = np.asarray(stats.num_samples, np.int64)
    with open(tmp_path, "wb") as f:  # a file object: np.savez would otherwise append ".npz" to the name
        np.savez(f, **arrays)
    os.replace(tmp_path, path)
    return path


def reference_stats_from_folder(
    folder: str | os.PathLike,
    extractor: FeatureExtractor,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    image_size: int = 256,
    recursive: bool = False,
) -> ReferenceStats:
    """Statistics of a folder of real images (png/jpg/jpeg, sorted), streamed in batches of ``batch_size``.

    Every image goes through :func:`~varianttrain.evaluation.images.adm_center_crop` to ``image_size`` — the rule
    ADM used for its ImageNet reference batches — so the reference sees what the generator is asked to produce;
    Inception's own resize to 299 happens inside the extractor (docs/REFERENCES.md L11: never resize to 299 yourself).
    """
    paths = list_images(folder, IMAGE_EXTENSIONS, recursive)
    if len(paths) < 2:
        raise FileNotFoundError(f"need at least 2 images (png/jpg/jpeg) in {folder} for statistics, found {len(paths)}")
    acc = MetricsAccumulator(extractor, device=device, keep_logits=False)
    for i in range(0, len(paths), batch_size):
        acc.update(torch.stack([load_image(p, image_size) for p in paths[i : i + batch_size]]))
    mu, sigma = acc.stats.mean_cov()
    return ReferenceStats(mu, sigma, acc.stats.n)


# -------------------------------------------------------------------------------------------------------- accumulator
class MetricsAccumulator:
    """Consumes ``uint8`` sample batches; keeps float64 FID sums, logits for IS and optionally features for P/R.

    Distributed use: every rank feeds its own samples, then all ranks call :meth:`compute` (statistics are
    all-reduced, logits/features gathered to rank 0). Pass the samples' global ``indices`` to :meth:`update` to make
    IS (whose splits depend on sample order) independent of world size and batch size, and to detect duplicated
    samples (e.g. from a padding ``DistributedSampler``). :meth:`state_dict` holds this rank's state only.

    Args:
        extractor: any :class:`FeatureExtractor`; should already be on ``device``.
        device: device for images and the float64 sums.
        keep_logits: keep logits for IS (50 000 × 1008 float32 ≈ 0.2 GB on CPU).
        keep_features: keep pool features for precision/recall (50 000 × 2048 float32 ≈ 0.4 GB on CPU).
        batch_size: extractor batch size; larger incoming batches are split. Fix it for reported numbers: float32
            GPU features depend slightly on it (docs/REFERENCES.md L15).

    On CUDA the extractor runs with TF32 disabled (see ``_strict_fp32``).
    """

    def __init__(
        self,
        extractor: FeatureExtractor,
        device: str | torch.device = "cpu",
        keep_logits: bool = True,
        keep_features: bool = False,
        batch_size: int | None = None,
    ) -> None:
        self.extractor = extractor
        self.device = torch.device(device)
        self.keep_logits, self.keep_features, self.batch_size = keep_logits, keep_features, batch_size
        self.stats = GaussianStats(device=self.device)
        self._logits: list[torch.Tensor] = []
        self._features: list[torch.Tensor] = []
        self._indices: list[torch.Tensor] = []

    @torch.no_grad()  # not inference_mode: the sums must stay ordinary tensors that can be updated/merged later
    def update(self, images_B3HW: torch.Tensor, indices_B: torch.Tensor | None = None) -> None:
        """Add a batch of ``uint8`` RGB images ``(B, 3, H, W)``, optionally with their global sample indices."""
        if images_B3HW.dtype != torch.uint8 or images_B3HW.dim() != 4 or images_B3HW.shape[1] != 3:
            # torch-fidelity rejects float input too (docs/REFERENCES.md L11); quantise with images.to_uint8 and a
            # documented rule.
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images_B3HW.dtype} {tuple(images_B3HW.shape)}")
        if self.stats.n > 0 and (indices_B is not None) != bool(self._indices):
            raise ValueError("pass indices with every batch or with none")
        if indices_B is not None:
            self._indices.append(torch.as_tensor(indices_B, dtype=torch.int64).reshape(-1).cpu())
            if self._indices[-1].numel() != images_B3HW.shape[0]:
                raise ValueError(f"{self._indices[-1].numel()} indices for {images_B3HW.shape[0]} images")
        step = self.batch_size or images_B3HW.shape[0]
        for i in range(0, images_B3HW.shape[0], step):
            chunk = images_B3HW[i : i + step].to(self.device, non_blocking=True)
            with _strict_fp32(self.device):
                pool_BF, logits_BK = self.extractor(chunk)
            if pool_BF.dim() != 2 or logits_BK.dim() != 2 or not len(pool_BF) == len(chunk) == len(logits_BK):
                raise ValueError(f"extractor returned {tuple(pool_BF.shape)}, {tuple(logits_BK.shape)}")
            self.stats.update(pool_BF)
            if self.keep_logits:
                self._logits.append(logits_BK.float().cpu())
            if self.keep_features:
                self._features.append(pool_BF.float().cpu())

    @property
    def num_samples(self) -> int:
        """Samples seen by this rank."""
        return self.stats.n

    @staticmethod
    def _gathered(parts: list[torch.Tensor], order_N: torch.Tensor | None) -> torch.Tensor | None:
        width = _max_over_ranks(parts[0].shape[1] if parts else 0)
        local = torch.cat(parts) if parts else torch.zeros(0, width)  # a rank may have seen no sample
        gathered = _gather_rows_to_rank0(local)
        return gathered if gathered is None or order_N is None else gathered[order_N]

    def compute(
        self,
        ref: ReferenceStats | None = None,
        ref_features_NF: torch.Tensor | None = None,
        is_splits: int = 10,
        is_shuffle: bool = True,
        is_seed: int = 2020,
        pr_k: int = 3,
    ) -> dict[str, float] | None:
        """Metrics over all ranks' samples; collective (call on every rank). Returns the dict on rank 0, else None.

        Keys: ``num_samples``; ``fid`` when ``ref`` is given; ``inception_score_mean``/``_std`` when logits are kept;
        ``precision``/``recall`` when features are kept and ``ref_features_NF`` (e.g. ADM ``arr_0`` features) given.
        """
        stats = self.stats.all_reduce()
        rank0 = not _dist_ready() or dist.get_rank() == 0
        order_N, index_error = None, None  # order None: keep rank-then-arrival order
        if self.keep_logits or self.keep_features:
            local_idx = torch.cat(self._indices) if self._indices else torch.zeros(0, dtype=torch.int64)
            idx_N = _gather_rows_to_rank0(local_idx)
            if rank0 and idx_N.numel() > 0:
                if idx_N.numel() != stats.n or idx_N.unique().numel() != stats.n:
                    index_error = f"sample indices missing or duplicated: {idx_N.unique().numel()} for {stats.n}"
                else:
                    order_N = idx_N.argsort()
        # Every rank takes part in every gather before rank 0 may raise; raising earlier would hang the others.
        logits_NK = self._gathered(self._logits, order_N) if self.keep_logits else None
        feats_NF = self._gathered(self._features, order_N) if self.keep_features else None
        if not rank0:
            return None
        if index_error is not None:
            raise ValueError(index_error)
        out: dict[str, float] = {"num_samples": stats.n}
        if ref is not None:
            mu, sigma = stats.mean_cov()
            out["fid"] = frechet_distance(mu, sigma, ref.mu, ref.sigma)
        if logits_NK is not None:
            out["inception_score_mean"], out["inception_score_std"] = inception_score(
                logits_NK, is_splits, is_shuffle, is_seed
            )
        if feats_NF is not None and ref_features_NF is not None:
            out["precision"], out["recall"] = precision_recall(ref_features_NF.to(self.device), feats_NF, k=pr_k)
        return out

    def state_dict(self) -> dict:
        """This rank's state (sums, kept logits/features/indices) for resuming an interrupted evaluation."""
        return {
            "stats": self.stats.state_dict(),
            "logits": _cat_or_none(self._logits),
            "features": _cat_or_none(self._features),
            "indices": _cat_or_none(self._indices),
        }

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
        self._logits = [] if state["logits"] is None else [state["logits"]]
        self._features = [] if state["features"] is None else [state["features"]]
        self._indices = [] if state["indices"] is None else [state["indices"]]


def _cat_or_none(parts: list[torch.Tensor]) -> torch.Tensor | None:
    return torch.cat(parts) if parts else None
