"""The built-in demo (README's main command): real small models, the whole system, a laptop CPU, minutes.

    python demo.py            # ~8 min on 2 CPU cores: data -> checksums -> VARiant fine-tune -> eval --mode all
    python demo.py --quick    # smoke run of every stage on a small data set of its own, the smallest budget only

1. generates the procedural 10-class demo data set under data/demo when missing (deterministic, reused);
2. checks the shipped demo models in checkpoints/demo/ against SHA256SUMS (tokenizer, VAR, supernet, CoDe refiner,
   classifier) and tokenises the demo images;
3. runs the first 30 steps of the VARiant fine-tune of the shipped VAR (--full-finetune: the whole recipe, ~25 min)
   and exports it;
4. runs eval.py --mode all at the supernet's depth budgets (d = 6, 4, 2 of 12): full model, VARiant subnets,
   DepthVAR, StageVAR, FastVAR, CoDe and early exit, with a demo FID / IS from the demo classifier (Inception weights
   cannot be downloaded here; real runs keep using Inception) and CPU latency, model-only and end to end;
5. prints the side-by-side table, the transformer's share of the time and how much of its FLOP speedup each VARiant
   subnet turns into time, and saves everything under a fresh runs/demo/<NNN>/.

Nothing is downloaded and no earlier demo run is overwritten. Details and measured results: docs/DEMO.md.
"""

from __future__ import annotations

import sys

from varianttrain.demo.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
