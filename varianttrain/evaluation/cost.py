"""Cost of a method: latency (model-only and end-to-end), images/s, peak memory, KV-cache bytes, FLOPs.

Protocol (docs/REFERENCES.md E3: fixed conditions, so speed-ups reproduce): for every batch size, `warmup` untimed
sampling calls, then `repeats` timed calls of ``generate(decode=False)`` (model-only: transformer + sampling, VQVAE
decode excluded) and `repeats` timed calls of ``generate(decode=True)`` (end-to-end, uint8 conversion excluded). The
median is reported (robust to a stray slow call), the mean and min are kept. Timing uses CUDA events with a synchronize
on GPU and `time.perf_counter` on CPU. Labels are ``arange(B) % classes``, seeds fixed.

Peak memory:
* GPU: ``torch.cuda.max_memory_allocated`` over one end-to-end call after ``reset_peak_memory_stats`` -- tensors
  only (weights, KV caches, activations), not the caching allocator's reserve;
* CPU: torch's CPU allocator has no peak counter and tracemalloc does not see tensor memory, so the number is
  ``bytes of parameters and buffers (VAR + VQVAE) + peak of live tensor bytes allocated during one end-to-end
  call`` (from the profiler's memory events). Comparable to the GPU figure in meaning, not in value; it is not
  the process RSS.
KV bytes are `SampleOutput.kv_cache_bytes`, FLOPs are `SampleOutput.flops` (what the sampler executed for the plan
actually used), both per batch and per image.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from varianttrain.models.var import VAR
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SampleOutput, SamplingMethod, generate


@dataclass
class CostRow:
    """Cost of one method at one batch size (seconds are per sampling call of `batch_size` images)."""

    method: str
    batch_size: int
    device: str
    model_s: float  # median, decode excluded
    e2e_s: float  # median, decode included
    model_s_mean: float
    e2e_s_mean: float
    model_s_min: float
    e2e_s_min: float
    images_per_s: float  # batch_size / e2e_s
    peak_memory_bytes: int | None
    peak_memory_kind: str  # how peak_memory_bytes was measured (see module docstring)
    kv_cache_bytes: int
    flops: int  # per call
    flops_per_image: float
    warmup: int
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


def _module_bytes(*modules: torch.nn.Module) -> int:
    total = 0
    for m in modules:
        total += sum(t.numel() * t.element_size() for t in m.parameters())
        total += sum(t.numel() * t.element_size() for t in m.buffers())
    return total


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cpu_peak_bytes(fn) -> int:
    """Peak of live tensor bytes allocated while `fn` runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def measure_cost(var: VAR, vqvae: torch.nn.Module, method: SamplingMethod, sampling: SamplingConfig,
                 batch_sizes: Sequence[int] = (1, 16, 64), warmup: int = 3, repeats: int = 10,
                 device: torch.device | str = "cpu", seed: int = 0) -> list[CostRow]:
    """Latency, throughput, memory, KV bytes and FLOPs of `method` at each batch size."""
    device = torch.device(device)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"cost: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    rows = []
    last: dict[str, SampleOutput] = {}

    def call(labels: torch.Tensor, decode: bool) -> None:
        rng = TokenRNG.per_image([seed + i for i in range(labels.shape[0])], device=device)
        last["out"] = generate(var, vqvae, labels, sampling, rng, method=method, decode=decode)

    for B in batch_sizes:
        labels = torch.arange(B, device=device) % var.num_classes
        for _ in range(warmup):
            call(labels, True)
        model_t = [_timed(lambda: call(labels, False), device) for _ in range(repeats)]  # noqa: B023 - used at once
        e2e_t = [_timed(lambda: call(labels, True), device) for _ in range(repeats)]  # noqa: B023
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            call(labels, True)
            torch.cuda.synchronize(device)
            peak, kind = int(torch.cuda.max_memory_allocated(device)), "cuda.max_memory_allocated"
        else:
            peak = _module_bytes(var, vqvae) + _cpu_peak_bytes(lambda: call(labels, True))  # noqa: B023
            kind = "cpu: weights + profiler peak of live tensors"
        out = last["out"]
        e2e = statistics.median(e2e_t)
        rows.append(CostRow(
            method=getattr(method, "name", "?"), batch_size=B, device=str(device),
            model_s=statistics.median(model_t), e2e_s=e2e, model_s_mean=statistics.fmean(model_t),
            e2e_s_mean=statistics.fmean(e2e_t), model_s_min=min(model_t), e2e_s_min=min(e2e_t),
            images_per_s=B / e2e if e2e > 0 else float("inf"), peak_memory_bytes=peak, peak_memory_kind=kind,
            kv_cache_bytes=int(out.kv_cache_bytes), flops=int(out.flops), flops_per_image=out.flops / B,
            warmup=warmup, repeats=repeats))
    return rows
