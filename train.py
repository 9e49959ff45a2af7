"""Train a VAR supernet (VARiant), pre-train a VAR, or run another registered task.

    python train.py --config configs/supernet_d30.yaml [--set optim.lr=2e-6 ...] [--resume [RUN_DIR]]

Everything happens in `varianttrain.training.runner` (importable, tested); this script only parses arguments.
Exit status: 0 finished, 2 bad config or input file (nothing written), 143 stopped by SIGTERM (checkpoint written).
See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import logging
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
    from varianttrain.training.runner import run  # heavy imports after argument errors are reported

    return run(args.config, args.overrides, args.resume)


if __name__ == "__main__":
    sys.exit(main())
