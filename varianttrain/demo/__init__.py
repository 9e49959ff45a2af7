"""The built-in demo: small real models trained on the procedural shapes data set, runnable on a laptop CPU.

* `artifacts`: turns the demo training runs into the shipped files under `checkpoints/demo/` (float16 storage,
  float32 models on load), verifies their SHA-256 sums, tokenises the demo images and measures the tokenizer.
* `pipeline`: the README's main command (`python demo.py`): data -> checksums -> supernet fine-tune -> export ->
  eval.py --mode all with the demo classifier -> side-by-side table + Pareto plot.
* `findings`: the papers' findings in miniature (`python -m varianttrain.demo.findings asymmetry|ratio|skipping`).
* `class_accuracy`: demo-classifier accuracy of generated samples (does a sample show the requested class?).

See docs/DEMO.md.
"""

from __future__ import annotations

DEMO_CHECKPOINTS = "checkpoints/demo"
DEMO_DATA = "data/demo"
DEMO_TOKENS = "data/demo_tokens"
