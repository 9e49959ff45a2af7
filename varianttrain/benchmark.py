"""Throughput benchmark: teacher-forcing training steps and KV-cached sampling, full network vs VARiant subnets.

    python -m varianttrain.benchmark --preset tiny            # CPU, seconds (what CI keeps working)
    python -m varianttrain.benchmark --preset d30 --batch 64  # GPU, VAR-d30 with random weights
    python -m varianttrain.benchmark --config configs/smoke_cpu.yaml --train-batch 16 --steps 20  # optimizer steps

Timings do not depend on weight values, so random weights stand in for var_d30.pth. Every figure of one run is
measured in the same process; compare ratios within a run, and absolute times only on a GPU. Prints a table and
writes JSON (`--out`).

Presets time the model alone (forward + backward of the training forward, and sampling per method). `--config`
times what a training run's step does instead: the supernet module of that training config (random weights, no
checkpoint read, no data loading) runs forward + backward + gradient clipping + the optimizer step, per depth.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from varianttrain.config_io import load_config, replace_path
from varianttrain.methods.budget import DepthBudget
from varianttrain.methods.registry import build_method
from varianttrain.methods.spec import MethodOptions
from varianttrain.models.depth_plan import SUBSET_RULES, DepthPlan, layer_subset
from varianttrain.models.flops import FlopCounter, teacher_forcing_flops
from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.sampling.config import SamplingConfig
from varianttrain.sampling.rng import TokenRNG
from varianttrain.sampling.sampler import SamplingMethod, generate
from varianttrain.training.config import SupernetRunConfig

# Dense bf16 tensor-core peaks (TFLOP/s) used for MFU; the figure for an unknown device is left empty.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "L20": 119.5, "4090": 165.2}


@dataclass(frozen=True)
class Preset:
    var: VARConfig
    vqvae: VQVAEConfig
    depth_choices: tuple[int, ...]
    bridge_scales: int


PRESETS: dict[str, Callable[[], Preset]] = {
    "tiny": lambda: Preset(
        VARConfig.for_depth(8, embed_dim=128, num_heads=4, patch_nums=(1, 2, 3, 4, 5, 6, 8), num_classes=10,
                            vocab_size=256, z_channels=16),
        VQVAEConfig(vocab_size=256, z_channels=16, ch=32, patch_nums=(1, 2, 3, 4, 5, 6, 8)), (4, 2), 4),
    "d16": lambda: Preset(VARConfig.for_depth(16), VQVAEConfig.released(), (8, 4, 2), 6),
    "d30": lambda: Preset(VARConfig.for_depth(30), VQVAEConfig.released(), (16, 8, 4, 2), 6),
}


@dataclass
class Row:
    kind: str  # "train" or "sample"
    name: str
    batch: int
    ms: float
    per_s: float  # tokens/s for training, images/s for sampling
    flops_per_item: float  # FLOPs per image (fwd+bwd for training)
    tflops: float
    ideal_speedup: float = 1.0  # FLOP ratio full / this (transformer blocks only)
    measured_speedup: float = 1.0
    mfu: float | None = None
    peak_mem_gb: float | None = None
    kv_cache_gb: float | None = None
    extra: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of `fn` in seconds after warm-up."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def plans_for(preset: Preset, rule: str) -> dict[str, DepthPlan]:
    cfg = preset.var
    plans = {"full": DepthPlan.full(cfg.depth, cfg.patch_nums)}
    for d in preset.depth_choices:
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
    rows = []
    base_time = base_flops = None
    for name, plan in plans.items():
        tokens = [plan.block_tokens(b) for b in range(cfg.depth)]
        tokens = [cfg.num_tokens if t is None else t for t in tokens]
        flops = 3 * teacher_forcing_flops(cfg.embed_dim, cfg.vocab_size, cfg.z_channels, cfg.patch_nums, tokens).total

        def step(plan=plan):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = var(label, x, plan)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
            loss.backward()
            var.zero_grad(set_to_none=True)

        _reset_peak(device)
        seconds = _time(step, device, warmup, repeats)
        tflops = flops * batch / seconds / 1e12
        if base_time is None:
            base_time, base_flops = seconds, flops
        rows.append(Row("train", name, batch, seconds * 1e3, batch * cfg.num_tokens / seconds, flops, tflops,
                        ideal_speedup=base_flops / flops, measured_speedup=base_time / seconds,
                        mfu=tflops / peak_tflops if peak_tflops else None, peak_mem_gb=_peak_gb(device)))
    return rows


def sampling_methods(var: VAR, preset: Preset, rule: str, names: list[str]) -> dict[str, SamplingMethod]:
    """Every requested method at every depth budget of the preset (full once)."""
    cfg = var.config
    full_budget = DepthBudget(cfg.depth, cfg.patch_nums, cfg.depth, bridge_scales=preset.bridge_scales)
    methods = {"full": build_method("full", var, MethodOptions(budget=full_budget))}
    for d in preset.depth_choices:
        budget = DepthBudget(cfg.depth, cfg.patch_nums, d, bridge_scales=preset.bridge_scales, subset_rule=rule,
                             depth_choices=preset.depth_choices)
        for name in names:
            if name != "full":
                methods[f"{name}-d{d}"] = build_method(name, var, MethodOptions(budget=budget))
    return methods


def bench_sampling(var: VAR, vqvae: VQVAE, methods: dict[str, SamplingMethod], batch: int, device: torch.device,
                   sampling: SamplingConfig, warmup: int, repeats: int, peak_tflops: float | None) -> list[Row]:
    """Model-only sampling latency (no VQVAE decode) of each method; FLOPs are those the sampler executed."""
    cfg = var.config
    var.eval()
    label = torch.arange(batch, device=device) % cfg.num_classes
    rows = []
    base_time = base_block_flops = None
    for name, method in methods.items():
        def run(method=method):
            return generate(var, vqvae, label, sampling, TokenRNG.per_image(range(batch), device), method=method,
                            decode=False)

        _reset_peak(device)
        seconds = _time(run, device, warmup, repeats)
        out = run()
        counted = FlopCounter()
        for step in out.stats:
            counted.merge(step.flops)
        closed = method.budget_match.flops.total * batch  # what the sampler runs must be what the method declares
        if out.flops != closed:
            raise AssertionError(f"{name}: counted {out.flops} FLOPs, closed form {closed}")
        tflops = out.flops / seconds / 1e12
        if base_time is None:
            base_time, base_block_flops = seconds, _block_flops(counted)
        rows.append(Row("sample", name, batch, seconds * 1e3, batch / seconds, out.flops / batch, tflops,
                        ideal_speedup=base_block_flops / _block_flops(counted), measured_speedup=base_time / seconds,
                        mfu=tflops / peak_tflops if peak_tflops else None, peak_mem_gb=_peak_gb(device),
                        kv_cache_gb=out.kv_cache_bytes / 2**30))
    return rows


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


def analytic_rows(preset: Preset, rule: str, names: list[str], batch: int = 64, kv_bytes_per_el: int = 2) -> list[dict]:
    """Closed-form cost of every method at every budget for the preset's full-size model, built on the meta device
    (no memory, no GPU): FLOPs per image, FLOP-ideal speedup (transformer blocks), KV-cache bytes at `batch`."""
    with torch.device("meta"):
        var = VAR(preset.var)
    methods = sampling_methods(var, preset, rule, names)
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


def format_table(rows: list[Row]) -> str:
    head = (f"| kind | plan | batch | ms | throughput | TFLOP/s | MFU | ideal speedup | measured | "
            f"measured/ideal | peak GB | KV GB |\n|{'---|' * 12}")
    lines = [head]
    for r in rows:
        unit = "tok/s" if r.kind == "train" else "img/s"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        mem = f"{r.peak_mem_gb:.2f}" if r.peak_mem_gb is not None else "-"
        kv = f"{r.kv_cache_gb:.3f}" if r.kv_cache_gb is not None else "-"
        lines.append(f"| {r.kind} | {r.name} | {r.batch} | {r.ms:.1f} | {r.per_s:,.1f} {unit} | {r.tflops:.3f} | "
                     f"{mfu} | {r.ideal_speedup:.2f}x | {r.measured_speedup:.2f}x | "
                     f"{r.measured_speedup / r.ideal_speedup:.2f} | {mem} | {kv} |")
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
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--no-sample", action="store_true")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["variant", "depthvar", "stagevar", "fastvar", "earlyexit"],
                        help="sampling methods timed at every depth budget of the preset (plus full)")
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
    if args.analytic:
        preset = PRESETS[args.preset]()
        rows = analytic_rows(preset, args.subset_rule, args.methods)
        print(f"# {args.preset}: closed-form cost per method (bridge N={preset.bridge_scales}, "
              f"{args.subset_rule} subsets)")
        print(format_analytic(rows))
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"preset": args.preset, "analytic": rows}, indent=2))
        return {"analytic": rows}

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    preset = PRESETS[args.preset]()
    torch.manual_seed(0)
    with torch.device(device):
        var = VAR(preset.var)
        vqvae = VQVAE(preset.vqvae).freeze()
    var.gradient_checkpointing = args.grad_checkpointing
    name = device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None) if device.type == "cuda" else None
    plans = plans_for(preset, args.subset_rule)
    sampling = SamplingConfig(autocast_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    rows: list[Row] = []
    if not args.no_train:
        train_batch = args.train_batch or (4 if device.type == "cpu" else 8)
        rows += bench_training(var, plans, train_batch, device, dtype, args.warmup, args.repeats, peak)
    if not args.no_sample:
        methods = sampling_methods(var, preset, args.subset_rule, args.methods)
        for batch in args.batch or ([4] if device.type == "cpu" else [1, 16, 64]):
            rows += bench_sampling(var, vqvae, methods, batch, device, sampling, args.warmup, args.repeats, peak)
    result = {"preset": args.preset, "device": name, "dtype": str(dtype), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "subset_rule": args.subset_rule,
              "bridge_scales": preset.bridge_scales, "rows": [asdict(r) for r in rows]}
    print(f"# {args.preset} on {name}, {dtype}, torch {torch.__version__}")
    print(format_table(rows))
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
