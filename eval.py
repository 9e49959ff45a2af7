"""Evaluate VAR / VARiant and the accelerators side by side: `python eval.py --help`.

    python eval.py --depth 8 --mode depthvar    # ImageNet 256, the released VAR-d30 (configs/eval_d30.yaml)

The command line lives in `varianttrain.cli.eval` (also installed as `varianttrain-eval`). See docs/EVALUATION.md.
"""

import sys

from varianttrain.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
