"""Throughput benchmark: teacher-forcing training steps and KV-cached sampling, full network vs VARiant subnets.

    python -m varianttrain.benchmark --preset tiny            # CPU, seconds (what CI keeps working)
    python -m varianttrain.benchmark --preset d16 --device cpu --threads 2 --no-train --batch 1 \
        --methods variant depthvar                            # CPU, a few minutes: sampling rows at VAR-d16 shape
    python -m varianttrain.benchmark --preset d30 --batch 64  # GPU, VAR-d30 with random weights
    python -m varianttrain.benchmark --config configs/smoke_cpu.yaml --train-batch 16 --steps 20  # optimizer steps

Timings do not depend on weight values, so random weights stand in for var_d30.pth. Every figure of one run is
measured in the same process; compare ratios within a run, and absolute times only on a GPU. Prints a table and
writes JSON (`--out`).

Presets time the model alone (forward + backward of the training forward, and sampling per method). `--config`
times what a training run's step does instead: the supernet module of that training config (random weights, no
checkpoint read, no data loading) runs forward + backward + gradient clipping + the optimizer step, per depth.

How sampling is timed: every plan runs `--warmup` times, then `--repeats` rounds in which each plan runs once, in
an order that rotates from round to round, so that a slow phase of a shared machine hits all plans alike; the
figure is the median over rounds (wall clock; the process CPU time is kept too, which other jobs disturb less).
One more call per plan, under the torch profiler, counts its operator calls and host syncs (`op_counts`) and checks
that the FLOPs the sampler executed are those the method declares.

Next to the FLOP-ideal speedup (full / method transformer-block FLOPs) each sampling row gets a bridge-aware
expected speedup: a `bridge-only` plan (the bridge scales with all blocks, no block after them; heads, token draws
and VQ updates at every scale) is timed at the same batch, and the method is expected to take the bridge-only time
(scaled by its share of the full model's bridge-block FLOPs) plus the rest of the full model's time scaled by its
share of the blocks' FLOPs after the bridge. Where small matrix products are bound by reading the weights (few
rows: small batches, the first scales) the bridge costs more than its FLOPs and no subnet reaches the FLOP ideal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from varianttrain.config_io import load_config, replace_path
from varianttrain.methods.budget import DepthBudget, plan_flops
from varianttrain.methods.registry import build_method
from varianttrain.methods.spec import MethodOptions
from varianttrain.models.depth_plan import SUBSET_RULES, DepthPlan, layer_subset
from varianttrain.models.flops import teacher_forcing_flops
from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.op_counts import count_ops
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, StaticPlanMethod, generate
from varianttrain.training.config import SupernetRunConfig

# Dense bf16 tensor-core peaks (TFLOP/s) used for MFU; the figure for an unknown device is left empty.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L20": 119.5, "4090": 165.2}


@dataclass(frozen=True)
class Preset:
    var: VARConfig
    vqvae: VQVAEConfig
    depth_choices: tuple[int, ...]
    bridge_scales: int
    rounds: int = 5  # default timed rounds (--repeats): medians of this many are stable to a few % on a CPU


PRESETS: dict[str, Callable[[], Preset]] = {
    "tiny": lambda: Preset(
        VARConfig.for_depth(8, embed_dim=128, num_heads=4, patch_nums=(1, 2, 3, 4, 5, 6, 8), num_classes=10,
                            vocab_size=256, z_channels=16),
        VQVAEConfig(vocab_size=256, z_channels=16, ch=32, patch_nums=(1, 2, 3, 4, 5, 6, 8)), (4, 2), 4, rounds=7),
    "d16": lambda: Preset(VARConfig.for_depth(16), VQVAEConfig.released(), (8, 4, 2), 6),
    "d30": lambda: Preset(VARConfig.for_depth(30), VQVAEConfig.released(), (16, 8, 4, 2), 6),
}
BRIDGE_ONLY = "bridge-only"  # the plan that runs the bridge scales only: what no subnet can go below


@dataclass
class Row:
    kind: str  # "train" or "sample"
    name: str
    batch: int
    ms: float  # median over rounds, wall clock
    per_s: float  # tokens/s for training, images/s for sampling
    flops_per_item: float  # FLOPs per image (fwd+bwd for training)
    tflops: float
    ideal_speedup: float = 1.0  # FLOP ratio full / this (transformer blocks only)
    measured_speedup: float = 1.0
    expected_speedup: float | None = None  # bridge-aware (sampling, when a bridge-only plan was timed)
    cpu_ms: float | None = None  # median process CPU time (all threads)
    ms_rounds: list[float] = field(default_factory=list)  # every timed round, wall clock
    ops: dict | None = None  # operator calls of one call (`op_counts.OpCounts`)
    block_calls: int | None = None  # sampling: transformer-block calls per sampling call, whatever the batch
    block_weight_gb: float | None = None  # sampling: block weights read per sampling call (one read per block call)
    mfu: float | None = None
    peak_mem_gb: float | None = None
    kv_cache_gb: float | None = None
    extra: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    last: object = None  # what the last timed call returned (a d30 sample at batch 16 is minutes: never run it twice)

    @property
    def median(self) -> float:
        return statistics.median(self.wall_s)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_s)


def time_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     rounds: int) -> dict[str, Timings]:
    """Wall and process CPU seconds of every fn: `warmup` untimed calls each, then `rounds` rounds in which each fn
    runs once, the order rotating by one per round (a slow phase of a shared machine hits every fn alike)."""
    if rounds < 1:
        raise ValueError(f"--repeats must be >= 1, got {rounds}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    out = {name: Timings() for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.process_time()
            result = fns[name]()
            _sync(device)
            out[name].last = result
            out[name].wall_s.append(time.perf_counter() - wall)
            out[name].cpu_s.append(time.process_time() - cpu)
    return out


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def plans_for(preset: Preset, rule: str, depths: tuple[int, ...] | None = None) -> dict[str, DepthPlan]:
    cfg = preset.var
    plans = {"full": DepthPlan.full(cfg.depth, cfg.patch_nums)}
    for d in preset.depth_choices if depths is None else depths:
        subset = layer_subset(cfg.depth, d, rule, preset.depth_choices)
        plans[f"variant-d{d}"] = DepthPlan.subnet(cfg.depth, cfg.patch_nums, preset.bridge_scales, subset)
    return plans


def _block_flops(counter) -> int:
    return counter.linear + counter.attention


def bench_training(var: VAR, plans: dict[str, DepthPlan], batch: int, device: torch.device, dtype: torch.dtype,
                   warmup: int, repeats: int, peak_tflops: float | None) -> list[Row]:
    cfg = var.config
    var.train()
    label = torch.randint(0, cfg.num_classes, (batch,), device=device)
    x = torch.randn(batch, cfg.num_tokens - cfg.patch_nums[0] ** 2, cfg.z_channels, device=device)
    target = torch.randint(0, cfg.vocab_size, (batch, cfg.num_tokens), device=device)
    steps, flops = {}, {}
    for name, plan in plans.items():
        tokens = [plan.block_tokens(b) for b in range(cfg.depth)]
        tokens = [cfg.num_tokens if t is None else t for t in tokens]
        flops[name] = 3 * teacher_forcing_flops(cfg.embed_dim, cfg.vocab_size, cfg.z_channels, cfg.patch_nums,
                                                tokens).total

        def step(plan=plan):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = var(label, x, plan)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            loss.backward()
            var.zero_grad(set_to_none=True)

        steps[name] = step
    times = time_interleaved(steps, device, warmup, repeats)
    base_time, base_flops = times["full"].median, flops["full"]
    rows = []
    for name, step in steps.items():
        _reset_peak(device)
        step()
        seconds = times[name].median
        tflops = flops[name] * batch / seconds / 1e12
        rows.append(Row("train", name, batch, seconds * 1e3, batch * cfg.num_tokens / seconds, flops[name], tflops,
                        ideal_speedup=base_flops / flops[name], measured_speedup=base_time / seconds,
                        cpu_ms=times[name].cpu_median * 1e3, ms_rounds=[t * 1e3 for t in times[name].wall_s],
                        mfu=tflops / peak_tflops if peak_tflops else None, peak_mem_gb=_peak_gb(device)))
    return rows


def bridge_only_plan(depth: int, patch_nums: tuple[int, ...], bridge_scales: int) -> DepthPlan:
    """The bridge scales with every block, no block after them (heads, draws and VQ updates still run)."""
    return DepthPlan.subnet(depth, patch_nums, bridge_scales, ())


def sampling_methods(var: VAR, preset: Preset, rule: str, names: list[str],
                     depths: tuple[int, ...] | None = None) -> dict[str, SamplingMethod]:
    """The full model, the bridge-only plan, then every requested method at every depth budget (`depths`: a subset
    of the preset's depth choices; the nested subsets are always built from all of them)."""
    cfg = var.config
    full_budget = DepthBudget(cfg.depth, cfg.patch_nums, cfg.depth, bridge_scales=preset.bridge_scales)
    methods = {"full": build_method("full", var, MethodOptions(budget=full_budget))}
    bridge = StaticPlanMethod(bridge_only_plan(cfg.depth, cfg.patch_nums, preset.bridge_scales), name=BRIDGE_ONLY)
    bridge.budget_match = full_budget.match(var, plan_flops(var, bridge.plan),
                                            f"the first {preset.bridge_scales} scales alone: the floor of any subnet")
    methods[BRIDGE_ONLY] = bridge
    for d in preset.depth_choices if depths is None else depths:
        if d not in preset.depth_choices:
            raise ValueError(f"--depths {d}: the preset's depth choices are {list(preset.depth_choices)}")
        budget = DepthBudget(cfg.depth, cfg.patch_nums, d, bridge_scales=preset.bridge_scales, subset_rule=rule,
                             depth_choices=preset.depth_choices)
        for name in names:
            if name != "full":
                methods[f"{name}-d{d}"] = build_method(name, var, MethodOptions(budget=budget))
    return methods


def block_weight_bytes(var: VAR) -> int:
    """Bytes of one block's weights that a block call reads: attention and MLP (the AdaLN projections are
    computed once per sampling call, `BlockModulations`). A block call on 2 rows reads as many as on 500: at batch 1
    these reads, not the FLOPs, set a block call's time."""
    block = var.blocks[0]
    return sum(p.numel() * p.element_size() for m in (block.attn, block.ffn) for p in m.parameters())


def _zone_block_flops(stats, bridge_scales: int) -> tuple[int, int]:
    """Transformer-block FLOPs of the bridge scales and of the scales after them."""
    bridge = sum(_block_flops(s.flops) for s in stats[:bridge_scales])
    return bridge, sum(_block_flops(s.flops) for s in stats[bridge_scales:])


def bench_sampling(var: VAR, vqvae: VQVAE, methods: dict[str, SamplingMethod], batch: int, device: torch.device,
                   sampling: SamplingConfig, warmup: int, repeats: int, peak_tflops: float | None,
                   bridge_scales: int | None = None, count: bool = True) -> list[Row]:
    """Model-only sampling latency (no VQVAE decode) of each method, timed interleaved (`time_interleaved`).

    FLOPs are those the sampler executed, checked against each method's declared cost. With `bridge_scales` and a
    `bridge-only` method, rows get the bridge-aware expected speedup (module docstring). `count`: operator calls
    and host syncs of one call per method (torch profiler).
    """
    cfg = var.config
    var.eval()
    label = torch.arange(batch, device=device) % cfg.num_classes
    runs = {name: (lambda method=method: generate(var, vqvae, label, sampling, TokenRNG.per_image(range(batch),
                                                                                                   device),
                                                  method=method, decode=False))
            for name, method in methods.items()}
    times = time_interleaved(runs, device, warmup, repeats)
    outs, ops, peaks = {}, {}, {}
    for name, method in methods.items():
        _reset_peak(device)
        if count:
            result = []
            ops[name] = count_ops(lambda run=runs[name], into=result: into.append(run()), device).as_dict()
            outs[name] = result[0]
        elif device.type == "cuda":  # one more call, so that the peak memory is this plan's
            outs[name] = runs[name]()
        else:  # no peak memory on a CPU: the last timed call's output serves the FLOP check
            outs[name] = times[name].last
        peaks[name] = _peak_gb(device)
        closed = method.budget_match.flops.total * batch  # what the sampler runs must be what the method declares
        if outs[name].flops != closed:
            raise AssertionError(f"{name}: counted {outs[name].flops} FLOPs, closed form {closed}")
    full_time, full_stats = times["full"].median, outs["full"].stats
    full_blocks = sum(_block_flops(s.flops) for s in full_stats)
    expect = bridge_scales is not None and BRIDGE_ONLY in methods
    if expect:
        bridge_time = times[BRIDGE_ONLY].median
        full_zones = _zone_block_flops(full_stats, bridge_scales)
    rows = []
    for name in methods:
        out, seconds = outs[name], times[name].median
        blocks = sum(_block_flops(s.flops) for s in out.stats)
        expected = None
        if expect and name != BRIDGE_ONLY:
            zones = _zone_block_flops(out.stats, bridge_scales)
            predicted = (bridge_time * zones[0] / full_zones[0]
                         + (full_time - bridge_time) * zones[1] / full_zones[1])
            expected = full_time / predicted
        tflops = out.flops / seconds / 1e12
        calls = sum(s.block_calls for s in out.stats)
        rows.append(Row("sample", name, batch, seconds * 1e3, batch / seconds, out.flops / batch, tflops,
                        ideal_speedup=full_blocks / blocks, measured_speedup=full_time / seconds,
                        expected_speedup=expected, cpu_ms=times[name].cpu_median * 1e3,
                        ms_rounds=[t * 1e3 for t in times[name].wall_s], ops=ops.get(name),
                        block_calls=calls, block_weight_gb=calls * block_weight_bytes(var) / 1e9,
                        mfu=tflops / peak_tflops if peak_tflops else None, peak_mem_gb=peaks[name],
                        kv_cache_gb=out.kv_cache_bytes / 2**30))
    return rows


def bridge_summary(rows: list[Row]) -> list[dict]:
    """Per sampling batch: the bridge-only plan's share of the full model's time and of its FLOPs.

    The FLOP-ideal speedups apply where the two shares agree; `ceiling` = full / bridge-only time bounds every
    subnet's measured speedup (its FLOP counterpart: `flop_ceiling`).
    """
    out = []
    for batch in sorted({r.batch for r in rows if r.kind == "sample"}):
        at = {r.name: r for r in rows if r.kind == "sample" and r.batch == batch}
        if "full" not in at or BRIDGE_ONLY not in at:
            continue
        full, bridge = at["full"], at[BRIDGE_ONLY]
        out.append({"batch": batch, "time_share": bridge.ms / full.ms,
                    "flop_share": bridge.flops_per_item / full.flops_per_item,
                    "ceiling": full.ms / bridge.ms, "flop_ceiling": full.flops_per_item / bridge.flops_per_item})
    return out


def bench_optimizer_step(cfg: SupernetRunConfig, batch: int, steps: int, images: bool,
                         warmup: int = 3) -> list[dict]:
    """A training run's optimizer step on the CPU, per depth (full + depth choices): ms/step, images/s, tokens/s.

    The supernet module of `cfg` with random weights (init 'scratch', no tokenizer checkpoint, no EMA) trains on
    synthetic data: token indices, or with `images` random images tokenised on the fly by its frozen VQVAE.
    """
    # Lightning comes with the training module: imported here so that the presets do not pay for it.
    from varianttrain.training.module import SupernetModule
    from varianttrain.training.optim import build_optimizer

    cfg = replace_path(cfg, "model.init", "scratch")
    cfg = replace_path(cfg, "model.vqvae_checkpoint", None)
    cfg = replace_path(cfg, "ema.enabled", False)
    module = SupernetModule(cfg)
    module.train()
    module.vqvae.eval()
    opt = build_optimizer(module.var, cfg.optim, on_cuda=False)
    L, res = module.var.L, cfg.data.resolution
    label_B = torch.randint(0, cfg.model.num_classes, (batch,))
    if images:
        x = torch.rand(batch, 3, res, res) * 2 - 1
    else:
        x = torch.randint(0, cfg.model.vqvae.vocab_size, (batch, L))
    rows = []
    for key, depth in module.eval_depths:
        module.set_active_subnet(1.0 if depth else 0.0, depth)
        for i in range(warmup + steps):
            if i == warmup:
                t0 = time.perf_counter()
            gt_BL, x_BLCv, lab = module.prepare_batch((x, label_B))
            logits = module.var(lab, x_BLCv, module.plan(depth))
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), gt_BL.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.var.parameters(), cfg.optim.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = (time.perf_counter() - t0) / steps
        rows.append({"depth": key, "ms_per_step": 1000 * dt, "images_per_s": batch / dt,
                     "tokens_per_s": batch * L / dt})
    return rows


def format_step_table(rows: list[dict]) -> str:
    lines = ["| depth | ms/step | images/s | tokens/s |", "|---|---|---|---|"]
    lines += [f"| {r['depth']} | {r['ms_per_step']:.1f} | {r['images_per_s']:.1f} | {r['tokens_per_s']:.0f} |"
              for r in rows]
    return "\n".join(lines)


def analytic_rows(preset: Preset, rule: str, names: list[str], batch: int = 64, kv_bytes_per_el: int = 2,
                  depths: tuple[int, ...] | None = None) -> list[dict]:
    """Closed-form cost of every method at every budget for the preset's full-size model, built on the meta device
    (no memory, no GPU): FLOPs per image, FLOP-ideal speedup (transformer blocks), KV-cache bytes at `batch`."""
    with torch.device("meta"):
        var = VAR(preset.var)
    methods = sampling_methods(var, preset, rule, names, depths)
    cfg = var.config
    out, base = [], None
    for name, method in methods.items():
        flops = method.budget_match.flops
        if base is None:
            base = flops
        kv = None
        plan = method.kv_capacity_plan()
        rows = getattr(method, "rows", lambda: [2] * len(cfg.patch_nums))()  # StageVAR drops a CFG branch
        if plan is not None:
            table = plan.tokens_per_block()  # [scale][block]
            kv = sum(r * sum(row) for r, row in zip(rows, table, strict=True)) * 2 * cfg.embed_dim * kv_bytes_per_el
            kv *= batch
        out.append({"method": name, "tflops_per_image": flops.total / 1e12,
                    "ideal_speedup_blocks": _block_flops(base) / _block_flops(flops),
                    "ideal_speedup_total": base.total / flops.total,
                    "kv_cache_gb": None if kv is None else kv / 2**30, "batch": batch})
    return out


def format_analytic(rows: list[dict]) -> str:
    lines = ["| method | TFLOP / image (CFG) | ideal speedup, blocks | ideal speedup, total | KV cache GiB (batch "
             f"{rows[0]['batch']}, bf16) |", "|---|---|---|---|---|"]
    for r in rows:
        kv = "-" if r["kv_cache_gb"] is None else f"{r['kv_cache_gb']:.2f}"
        lines.append(f"| {r['method']} | {r['tflops_per_image']:.3f} | {r['ideal_speedup_blocks']:.2f}x | "
                     f"{r['ideal_speedup_total']:.2f}x | {kv} |")
    return "\n".join(lines)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _spread(r: Row) -> str:
    """Half the interquartile range of the rounds, relative to the median."""
    if len(r.ms_rounds) < 2:
        return "-"
    q1, _, q3 = statistics.quantiles(r.ms_rounds, n=4, method="inclusive")
    return f"{50 * (q3 - q1) / r.ms:.1f}%"


def format_table(rows: list[Row]) -> str:
    """Markdown: one table of training rows, one of sampling rows (whichever exist)."""
    parts = []
    train = [r for r in rows if r.kind == "train"]
    if train:
        lines = ["| plan | batch | ms | ± | CPU ms | tok/s | TFLOP/s | MFU | ideal | measured | measured/ideal | "
                 "peak GB |", "|" + "---|" * 12]
        for r in train:
            lines.append(f"| {r.name} | {r.batch} | {r.ms:.1f} | {_spread(r)} | {r.cpu_ms:.0f} | {r.per_s:,.0f} | "
                         f"{r.tflops:.3f} | {'-' if r.mfu is None else f'{100 * r.mfu:.1f}%'} | "
                         f"{_x(r.ideal_speedup)} | {_x(r.measured_speedup)} | "
                         f"{r.measured_speedup / r.ideal_speedup:.2f} | "
                         f"{'-' if r.peak_mem_gb is None else f'{r.peak_mem_gb:.2f}'} |")
        parts.append("\n".join(lines))
    sample = [r for r in rows if r.kind == "sample"]
    if sample:
        lines = ["| plan | batch | ms | ± | CPU ms | img/s | TFLOP/s | ideal | expected | measured | "
                 "measured/ideal | measured/expected | block calls | weights GB read | ops | aten calls | syncs | "
                 "KV GB |", "|" + "---|" * 18]
        for r in sample:
            ops = r.ops or {}
            expected = "-" if r.expected_speedup is None else f"{r.measured_speedup / r.expected_speedup:.2f}"
            lines.append(f"| {r.name} | {r.batch} | {r.ms:.1f} | {_spread(r)} | {r.cpu_ms:.0f} | {r.per_s:,.2f} | "
                         f"{r.tflops:.3f} | {_x(r.ideal_speedup)} | {_x(r.expected_speedup)} | "
                         f"{_x(r.measured_speedup)} | {r.measured_speedup / r.ideal_speedup:.2f} | {expected} | "
                         f"{r.block_calls} | {r.block_weight_gb:.2f} | "
                         f"{ops.get('ops', '-')} | {ops.get('aten_calls', '-')} | {ops.get('host_syncs', '-')} | "
                         f"{'-' if r.kv_cache_gb is None else f'{r.kv_cache_gb:.3f}'} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def format_bridge(summary: list[dict]) -> str:
    lines = ["| batch | bridge-only time / full | bridge-only FLOPs / full | ceiling (time) | ceiling (FLOPs) |",
             "|---|---|---|---|---|"]
    lines += [f"| {b['batch']} | {b['time_share']:.3f} | {b['flop_share']:.3f} | {b['ceiling']:.2f}x | "
              f"{b['flop_ceiling']:.2f}x |" for b in summary]
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=None, help="sampling batch sizes")
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None)
    parser.add_argument("--subset-rule", choices=SUBSET_RULES, default="nested")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 gives stable numbers on a shared machine")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of every plan before the rounds")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds (each runs every plan once, interleaved); default: the preset's")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("--no-op-count", action="store_true",
                        help="skip the profiled call per sampling plan (operator calls, host syncs)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--methods", nargs="*", default=["variant", "depthvar", "stagevar", "fastvar", "earlyexit"],
                        help="sampling methods timed at every depth budget of the preset (plus full and the "
                             "bridge-only plan); none: only those two")
    parser.add_argument("--depths", type=int, nargs="+", default=None,
                        help="time only these of the preset's depth budgets (default: all)")
    parser.add_argument("--analytic", action="store_true",
                        help="only the closed-form FLOPs / ideal speedups / KV bytes of the preset (meta device, any "
                             "machine); d30 numbers without a GPU")
    parser.add_argument("--config", type=Path, default=None,
                        help="time a training config's optimizer step per depth instead of a preset (CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of --config (repeatable)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per depth (--config)")
    parser.add_argument("--images", action="store_true",
                        help="--config: tokenise synthetic images on the fly (VQVAE encode) instead of token indices")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.config is not None:
        return _main_optimizer_step(args)
    preset = PRESETS[args.preset]()
    depths = None if args.depths is None else tuple(args.depths)
    if args.analytic:
        rows = analytic_rows(preset, args.subset_rule, args.methods, depths=depths)
        print(f"# {args.preset}: closed-form cost per method (bridge N={preset.bridge_scales}, "
              f"{args.subset_rule} subsets)")
        print(format_analytic(rows))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"preset": args.preset, "analytic": rows}, indent=2))
        return {"analytic": rows}

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    rounds = args.repeats or preset.rounds
    load_before = os.getloadavg()
    torch.manual_seed(0)
    with torch.device(device):
        var = VAR(preset.var)
        vqvae = VQVAE(preset.vqvae).freeze()
    var.gradient_checkpointing = args.grad_checkpointing
    name = device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if device.type == "cuda" else None
    sampling = SamplingConfig(autocast_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    rows: list[Row] = []
    if not args.no_train:
        train_batch = args.train_batch or (4 if device.type == "cpu" else 8)
        plans = plans_for(preset, args.subset_rule, depths)
        rows += bench_training(var, plans, train_batch, device, dtype, args.warmup, rounds, peak)
    if not args.no_sample:
        methods = sampling_methods(var, preset, args.subset_rule, args.methods, depths)
        for batch in args.batch or ([4] if device.type == "cpu" else [1, 16, 64]):
            rows += bench_sampling(var, vqvae, methods, batch, device, sampling, args.warmup, rounds, peak,
                                   bridge_scales=preset.bridge_scales, count=not args.no_op_count)
    bridge = bridge_summary(rows)
    result = {"preset": args.preset, "device": name, "dtype": str(dtype), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python -m varianttrain.benchmark",
                                                                      *(sys.argv[1:] if argv is None else argv)]),
              "subset_rule": args.subset_rule, "bridge_scales": preset.bridge_scales, "warmup": args.warmup,
              "rounds": rounds, "load_average": {"before": load_before, "after": os.getloadavg()},
              "rows": [asdict(r) for r in rows], "bridge": bridge}
    print(f"# {args.preset} on {name}, {dtype}, torch {torch.__version__}; medians of {rounds} interleaved rounds; "
          f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(format_table(rows))
    if bridge:
        print()
        print(format_bridge(bridge))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


def _main_optimizer_step(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    cfg = load_config(SupernetRunConfig, args.config, args.overrides)
    batch = args.train_batch or 8
    rows = bench_optimizer_step(cfg, batch, args.steps, args.images)
    print(f"# {args.config}, batch {batch}, {args.steps} steps, input "
          f"{'images (VQVAE on the fly)' if args.images else 'token indices'}, {device_name(torch.device('cpu'))}, "
          f"torch {torch.__version__}")
    print(format_step_table(rows))
    result = {"config": str(args.config), "overrides": args.overrides, "batch": batch, "steps": args.steps,
              "images": args.images, "device": device_name(torch.device("cpu")), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "optimizer_step": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
