"""Train a VAR supernet (VARiant), pre-train a VAR, or train a demo model: `python train.py --help`.

    python train.py --config supernet_d30.yaml [--set optim.lr=2e-6 ...] [--resume [RUN_DIR]]

The command line lives in `varianttrain.cli.train` (also installed as `varianttrain-train`). See docs/TRAINING.md.
"""

import sys

from varianttrain.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
