"""Train a VAR supernet (VARiant), pre-train a VAR, or train a demo model (tasks: `varianttrain.tasks.TASKS`).

    python train.py --config configs/supernet_d30.yaml [--set optim.lr=2e-6 ...] [--resume [RUN_DIR]]

Everything happens in `varianttrain.training.runner` (importable, tested); this script parses arguments, passes the
project's task table and applies the process-wide settings of the config (`trainer.cpu_threads`).
Exit status: 0 finished, 2 bad config or input file (nothing written), 143 stopped by SIGTERM (checkpoint written).
See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of train.py."""
    parser = argparse.ArgumentParser(description="Train a VAR supernet (see docs/TRAINING.md)")
    parser.add_argument("--config", help="YAML run config (configs/supernet_d30.yaml, configs/smoke_cpu.yaml, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set optim.lr=2e-6 (repeatable)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                        help="continue the newest checkpoint of RUN_DIR (default: the newest run of --config)")
    args = parser.parse_args(argv)
    if not args.config and not isinstance(args.resume, str):
        parser.error("--config is required (or --resume RUN_DIR)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse, then hand over to the runner; returns the exit status."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Heavy imports after argument errors are reported.
    import torch

    from varianttrain.checkpoints import CheckpointError
    from varianttrain.config_io import ConfigError
    from varianttrain.tasks import TASKS
    from varianttrain.training.runner import resolve_run_config, run

    try:
        _, cfg, _ = resolve_run_config(args.config, args.overrides, args.resume, TASKS)
    except (ConfigError, CheckpointError, FileNotFoundError):
        cfg = None  # run() reports the problem and returns its exit status
    # A per-process setting: every rank runs this script (Lightning re-executes it, torchrun / SLURM start it).
    # OMP_NUM_THREADS too, or Lightning's DDP launcher would replace the count with its own (cores / ranks).
    if cfg is not None and cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.trainer.cpu_threads)
    return run(args.config, args.overrides, args.resume, tasks=TASKS)


if __name__ == "__main__":
    sys.exit(main())
