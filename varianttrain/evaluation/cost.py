"""Cost of a method: latency (model-only and end-to-end), images/s, peak memory, KV-cache bytes, FLOPs.

Protocol (docs/REFERENCES.md E3: fixed conditions, so speed-ups reproduce): for every batch size, `warmup` untimed
sampling calls of every method, then `repeats` rounds; each round times one ``generate(decode=False)`` call
(model-only: transformer + sampling, VQVAE decode excluded) and one ``generate(decode=True)`` call (end-to-end, uint8
conversion excluded) of every method, the order rotated from round to round. Interleaving matters on a shared machine:
a slow minute (another job, a thermal step) then hits every method of a round alike, so the ratio of two methods'
medians (the reported speedup) moves far less than their absolute times; timing one method after the other lets it
land on one of them only. The median is reported (robust to a stray slow call); the mean, the min and every round's
time are kept (`*_rounds`, in round order, so that paired per-round ratios can be formed). Timing uses CUDA events
with a synchronize on GPU and `time.perf_counter` on CPU. Labels are ``arange(B) % classes``, seeds fixed.

Peak memory = the bytes of parameters and buffers of the models the method uses (its VAR, CoDe's refiner too,
and the VQVAE) + the peak of tensor memory allocated on top of them during one end-to-end call:
* GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated before the
  call (other models of the run may be resident and must not be charged to this method); tensors only, not the
  caching allocator's reserve;
* CPU: torch's CPU allocator has no peak counter and tracemalloc does not see tensor memory, so the activation
  peak is the peak of live tensor bytes from the profiler's memory events (its native log lines are kept off the
  terminal, `quiet_native_output`). Comparable to the GPU figure in meaning, not in value; it is not the RSS.
KV bytes are `SampleOutput.kv_cache_bytes`, FLOPs are `SampleOutput.flops` (what the sampler executed for the plan
actually used), both per batch and per image.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
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
    kv_cache_bytes: int  # peak of the call (CoDe: the larger of its two models' caches; they never coexist)
    kv_cache_bytes_by_model: list[int]  # per model the call used, in order (CoDe: drafter, refiner)
    flops: int  # per call
    flops_per_image: float
    warmup: int
    repeats: int
    model_s_rounds: list[float]  # every timed call, in round order (rounds are shared by all methods of a run)
    e2e_s_rounds: list[float]

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


@contextlib.contextmanager
def quiet_native_output() -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 to /dev/null for the duration.

    The CPU profiler's C++ backend prints tracing lines ("USDT: ... profiler_start") and a failed GPU probe
    ("gpuGetDeviceCount failed") straight to the descriptors, past Python's streams; they are noise in a CPU
    run's log. Python-level output is flushed first and restored afterwards; an exception still propagates.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _cpu_peak_bytes(fn) -> int:
    """Peak of live tensor bytes allocated while `fn` runs, from the profiler's allocation events."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_native_output(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@dataclass
class TimedMethod:
    """One method to time: its name, the VAR it samples with, the method, and further models it runs (CoDe's
    refiner), whose weights count in its peak memory."""

    name: str
    var: VAR
    method: SamplingMethod
    extra_models: Sequence[torch.nn.Module] = ()


def measure_costs(entries: Sequence[TimedMethod], vqvae: torch.nn.Module, sampling: SamplingConfig,
                  batch_sizes: Sequence[int] = (1, 16, 64), warmup: int = 3, repeats: int = 10,
                  device: torch.device | str = "cpu", seed: int = 0) -> dict[str, list[CostRow]]:
    """Latency, throughput, memory, KV bytes and FLOPs of every entry at each batch size, timed in interleaved
    rounds (module docstring); returns {entry name: one CostRow per batch size}."""
    device = torch.device(device)
    if repeats < 1 or warmup < 0:
        raise ValueError(f"cost: repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    if len({e.name for e in entries}) != len(entries):
        raise ValueError(f"cost: entry names must be unique, got {[e.name for e in entries]}")
    out: dict[str, list[CostRow]] = {e.name: [] for e in entries}
    last: dict[str, SampleOutput] = {}

    def call(entry: TimedMethod, labels: torch.Tensor, decode: bool) -> None:
        rng = TokenRNG.per_image([seed + i for i in range(labels.shape[0])], device=device)
        last[entry.name] = generate(entry.var, vqvae, labels, sampling, rng, method=entry.method, decode=decode)

    from varianttrain.evaluation.progress import progress_bar

    calls = len(batch_sizes) * len(entries) * (warmup + 2 * repeats + 1)
    with progress_bar(calls, f"timing {len(entries)} methods", unit="call") as bar:
        for B in batch_sizes:
            labels = torch.arange(B, device=device) % entries[0].var.num_classes if entries else None
            for entry in entries:
                for _ in range(warmup):
                    call(entry, labels, True)
                    bar.update()
            model_t: dict[str, list[float]] = {e.name: [] for e in entries}
            e2e_t: dict[str, list[float]] = {e.name: [] for e in entries}
            for r in range(repeats):
                order = list(entries[r % len(entries):]) + list(entries[:r % len(entries)])
                for entry in order:
                    model_t[entry.name].append(_timed(lambda: call(entry, labels, False), device))  # noqa: B023
                    bar.update()
                for entry in order:
                    e2e_t[entry.name].append(_timed(lambda: call(entry, labels, True), device))  # noqa: B023
                    bar.update()
            for entry in entries:
                out[entry.name].append(_row(entry, vqvae, labels, device, call, last, model_t[entry.name],
                                            e2e_t[entry.name], warmup))
                bar.update()
    return out


def _row(entry: TimedMethod, vqvae: torch.nn.Module, labels: torch.Tensor, device: torch.device, call, last,
         model_t: list[float], e2e_t: list[float], warmup: int) -> CostRow:
    """The CostRow of one entry at one batch size: the timings, then one more call for the memory peak."""
    B = labels.shape[0]
    weights = _module_bytes(entry.var, vqvae, *entry.extra_models)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        call(entry, labels, True)
        torch.cuda.synchronize(device)
        peak = weights + int(torch.cuda.max_memory_allocated(device)) - resident
        kind = "cuda: weights of the models used + max_memory_allocated above the resident tensors"
    else:
        peak = weights + _cpu_peak_bytes(lambda: call(entry, labels, True))
        kind = "cpu: weights of the models used + profiler peak of live tensors"
    out = last[entry.name]
    e2e = statistics.median(e2e_t)
    return CostRow(
        method=entry.name, batch_size=B, device=str(device),
        model_s=statistics.median(model_t), e2e_s=e2e, model_s_mean=statistics.fmean(model_t),
        e2e_s_mean=statistics.fmean(e2e_t), model_s_min=min(model_t), e2e_s_min=min(e2e_t),
        images_per_s=B / e2e if e2e > 0 else float("inf"), peak_memory_bytes=peak, peak_memory_kind=kind,
        kv_cache_bytes=int(out.kv_cache_bytes), kv_cache_bytes_by_model=[int(b) for b in out.kv_cache_bytes_by_model],
        flops=int(out.flops), flops_per_image=out.flops / B, warmup=warmup, repeats=len(model_t),
        model_s_rounds=list(model_t), e2e_s_rounds=list(e2e_t))


def block_time_share(var: VAR, vqvae: torch.nn.Module, sampling: SamplingConfig, batch_size: int, repeats: int = 3,
                     device: torch.device | str = "cpu", seed: int = 0) -> float:
    """Fraction of the full model's model-only sampling time spent inside its transformer blocks.

    Measured with forward hooks around every block in calls of their own (the hooks cost a little, and on a GPU they
    synchronize, so these calls are not the latency figures); the median over `repeats` calls. It says whether
    layer skipping can pay off at this batch size: the head, the sampling and the Python around the blocks are not
    skipped by any method.
    """
    device = torch.device(device)
    inside = [0.0]
    started: list[float] = []

    def now() -> float:
        if device.type == "cuda":  # kernels run asynchronously: wait for the block's work to end
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def pre(_module, _args) -> None:
        started.append(now())

    def post(_module, _args, _out) -> None:
        inside[0] += now() - started.pop()

    handles = [h for b in var.blocks for h in (b.register_forward_pre_hook(pre), b.register_forward_hook(post))]
    labels = torch.arange(batch_size, device=device) % var.num_classes
    shares = []
    try:
        for _ in range(repeats + 1):  # the first call warms up
            inside[0] = 0.0
            rng = TokenRNG.per_image([seed + i for i in range(batch_size)], device=device)
            total = _timed(lambda: generate(var, vqvae, labels, sampling, rng, decode=False), device)  # noqa: B023
            shares.append(inside[0] / total)
    finally:
        for h in handles:
            h.remove()
    return statistics.median(shares[1:])
