"""`python train.py` / `varianttrain-train`: train a VAR supernet (VARiant), pre-train a VAR, or train a demo model.

    python train.py --config supernet_d30.yaml [--set optim.lr=2e-6 ...] [--resume [RUN_DIR]] [--print-config]

`--config` takes a path, or a name in the repository's configs/ folder. Everything else happens in
`varianttrain.training.runner` (importable, tested): every input is checked before anything is built, a run folder
`runs/<name>/<NNN>` is created, checkpoints are written and a resumed run continues exactly. Exit status: 0
finished, 2 bad config or input (all problems listed, nothing written), 143 stopped by SIGTERM (checkpoint written).
See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EPILOG = """tasks: supernet (VARiant fine-tuning), pretrain (a VAR from scratch), tokenizer / classifier (demo models).
configs shipped in configs/: {configs}
first time with the released weights: python -m varianttrain.download (then see docs/TRAINING.md)"""


def _shipped_configs() -> str:
    from varianttrain.paths import CONFIGS

    return ", ".join(sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml"))) if CONFIGS.is_dir() \
        else "(none)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of train.py."""
    parser = argparse.ArgumentParser(prog="train.py", description="Train a VAR supernet (see docs/TRAINING.md)",
                                     epilog=EPILOG.format(configs=_shipped_configs()),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML run config: a path, or a name in configs/ (supernet_d30.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set optim.lr=2e-6 (repeatable)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                        help="continue the newest checkpoint of RUN_DIR (default: the newest run of --config)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + overrides + defaults) and exit")
    args = parser.parse_args(argv)
    if not args.config and not isinstance(args.resume, str):
        parser.error("--config is required (or --resume RUN_DIR)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse, resolve the config, apply per-process settings, hand over to the runner; returns the exit status."""
    args = parse_args(argv)
    from varianttrain.paths import ConfigNotFound, resolve_config

    config = args.config
    if config is not None:
        try:
            path, looked_up = resolve_config(config)
        except ConfigNotFound as err:
            print(f"train.py: error: {err}", file=sys.stderr)
            return 2
        if looked_up:
            print(f"train.py: using {path}", file=sys.stderr)
        config = str(path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Heavy imports after argument errors are reported.
    import torch

    from varianttrain.checkpoints import CheckpointError
    from varianttrain.config_io import ConfigError, to_yaml
    from varianttrain.tasks import TASKS
    from varianttrain.training.runner import resolve_run_config, run

    try:
        _, cfg, _ = resolve_run_config(config, args.overrides, args.resume, TASKS)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        if args.print_config:
            print(f"train.py: error: {err}", file=sys.stderr)
            return 2
        cfg = None  # run() reports the problem and returns its exit status
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    # A per-process setting: every rank runs this script (Lightning re-executes it, torchrun / SLURM start it).
    # OMP_NUM_THREADS too, or Lightning's DDP launcher would replace the count with its own (cores / ranks).
    if cfg is not None and cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
        os.environ["OMP_NUM_THREADS"] = str(cfg.trainer.cpu_threads)
    return run(config, args.overrides, args.resume, tasks=TASKS)


if __name__ == "__main__":
    sys.exit(main())
