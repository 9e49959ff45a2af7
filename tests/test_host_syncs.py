"""No host sync inside the sampling loop: every method samples without reading tensor data back to the host, and
once warm without building tensors from host data (a host-to-device copy each on a GPU).

A GPU would stall at each such read; `HostSyncCounter` sees them on the CPU too (see its module). The one
documented exception: DepthVAR with 'min' rank ties, whose per-image token counts differ, reads them once per
accelerated scale to shape its padded gathers.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))

import make_method_indices as fixture  # noqa: E402

from varianttrain.sampling.config import SamplingConfig  # noqa: E402
from varianttrain.sampling.host_syncs import HostSyncCounter  # noqa: E402
from varianttrain.sampling.rng import TokenRNG  # noqa: E402
from varianttrain.sampling.sampler import generate  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny matmuls: threads only contend on shared cores (restored by conftest)


@pytest.fixture(scope="module")
def models():
    return fixture.models()


def test_the_counter_sees_each_kind_of_host_read():
    x = torch.arange(6.0)
    with HostSyncCounter() as syncs:
        x.sum().item()
        x.tolist()
        bool(x[0])
        x[x > 2].sum()
        x.nonzero()
        torch.where(x > 1, x, -x).softmax(0).argmax()  # stays on the device
        x[[0, 2]] = 1.0  # a list index: a tensor built from host data
        x[..., -1:] = 0.0  # a scalar: a kernel argument
    assert syncs.calls == {"aten::_local_scalar_dense": 2, "Tensor.tolist": 1, "aten::index": 1, "aten::nonzero": 1}
    assert syncs.host_tensors == 1
    assert "tolist" not in torch.Tensor.__dict__  # the patch is gone


@pytest.mark.parametrize("name", list(fixture.methods(*fixture.models()[:2])))
def test_sampling_reads_nothing_back(models, name):
    var, refiner, vqvae = models
    method = fixture.methods(var, refiner)[name]  # a fresh instance: its first call, KV sizing included
    sampling, labels = fixture.SAMPLINGS["topk10_topp0.9"], torch.tensor(fixture.LABELS)
    seeds = TokenRNG.per_image(fixture.SEEDS)
    with HostSyncCounter() as syncs:
        generate(var, vqvae, labels, sampling, seeds, method=method)
    if "rank_ties=min" in name:
        assert syncs.calls == {"Tensor.tolist": len(method.accelerated)}
    else:
        assert syncs.count == 0, dict(syncs.calls)
    seeds = TokenRNG.per_image(fixture.SEEDS)
    with HostSyncCounter() as warm:  # the second call finds its device tables and capacity plan made
        generate(var, vqvae, labels, sampling, seeds, method=method)
    assert warm.host_tensors == 0


def test_shared_seed_draws_read_nothing_back(models):
    var, _, vqvae = models
    labels, seed = torch.tensor(fixture.LABELS), TokenRNG.shared_seed(0)
    with HostSyncCounter() as syncs:
        generate(var, vqvae, labels, SamplingConfig(cfg=1.5, top_k=10, top_p=0.9, more_smooth=True), seed)
    assert syncs.count == 0 and syncs.host_tensors == 0
