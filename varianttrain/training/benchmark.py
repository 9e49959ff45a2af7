"""Training throughput of the supernet step (forward + backward + AdamW step) per depth, on this machine.

    python -m varianttrain.training.benchmark [--config configs/smoke_cpu.yaml] [--batch 8] [--steps 20]
        [--images] [--threads N] [--set key=value ...]

Measures the module's training step without data loading (synthetic token indices, or with --images synthetic
images tokenised on the fly by the frozen VQVAE) for the full network and each subnet, and prints a Markdown table
(images/s, tokens/s, ms/step). Model weights are random (init 'scratch'); no checkpoint files are read.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from varianttrain.config_io import load_config, replace_path
from varianttrain.training.config import SupernetRunConfig
from varianttrain.training.module import SupernetModule
from varianttrain.training.optim import build_optimizer


def measure(cfg: SupernetRunConfig, batch: int, steps: int, images: bool, warmup: int = 3) -> list[dict]:
    """One row per depth (full + depth choices): images/s, tokens/s, ms per optimizer step."""
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


def main(argv: list[str] | None = None) -> int:
    """CLI: print the throughput table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/smoke_cpu.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--images", action="store_true", help="tokenise synthetic images on the fly (VQVAE encode)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(SupernetRunConfig, args.config, args.overrides)
    rows = measure(cfg, args.batch, args.steps, args.images)
    print(f"# {args.config}, batch {args.batch}, {args.steps} steps, input "
          f"{'images (VQVAE on the fly)' if args.images else 'token indices'}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| depth | ms/step | images/s | tokens/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['depth']} | {r['ms_per_step']:.1f} | {r['images_per_s']:.1f} | {r['tokens_per_s']:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
