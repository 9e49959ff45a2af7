"""The built-in demo (README's main command): real small models, the whole system, a laptop CPU, minutes.

    python demo.py            # ~7-8 min on 2 CPU cores: data -> checksums -> VARiant fine-tune -> eval --mode all
    python demo.py --quick    # smoke run of every stage (~2 min on a fresh clone, most of it tokenising once)

1. generates the procedural 10-class demo data set under data/demo when missing (deterministic, reused);
2. checks the shipped demo models in checkpoints/demo/ against SHA256SUMS (tokenizer, VAR, classifier);
3. fine-tunes the shipped demo VAR into an elastic-depth supernet with VARiant's 3-phase progressive schedule;
4. exports it and runs eval.py --mode all at the depth budgets D/2 and D/4: full model, VARiant subnets, DepthVAR,
   StageVAR, FastVAR and early exit, with a demo FID / IS from the demo classifier (Inception weights cannot be
   downloaded here; real runs keep using Inception) and CPU latency;
5. prints the side-by-side table and saves it with the Pareto plot under a fresh runs/demo/<NNN>/.

Nothing is downloaded and no earlier demo run is overwritten. Details and measured results (411 s for the main
command on a 2-core VM): docs/DEMO.md.
"""

from __future__ import annotations

import sys

from varianttrain.demo.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
