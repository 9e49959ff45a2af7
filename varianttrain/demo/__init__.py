"""The built-in demo: small real models trained on a procedural shapes data set, runnable on a laptop CPU.

* `dataset`: the procedural 10-class shapes data set (`python -m varianttrain.demo.dataset`).
* `tokenizer_task`, `classifier_task`, `tasks`: the demo's own training tasks (`train.py` runs them through
  `varianttrain.tasks.TASKS`); the demo classifier network is `varianttrain.models.demo_classifier`.
* `artifacts`: turns the demo training runs into the shipped files under `checkpoints/demo/` (float16 storage,
  float32 models on load), verifies their SHA-256 sums, tokenises the demo images and measures the tokenizer.
* `pipeline`: the README's main command (`python demo.py`): data -> checksums -> supernet fine-tune -> export ->
  eval.py --mode all with the demo classifier -> side-by-side table + Pareto plot.
* `findings`: the papers' findings in miniature (`python -m varianttrain.demo.findings asymmetry|ratio|methods`).
* `class_accuracy`: demo-classifier accuracy of generated samples (does a sample show the requested class?).

The demo's default files are named relative to the repository root (`REPO_ROOT`), so it runs from any directory.
See docs/DEMO.md.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CHECKPOINTS = REPO_ROOT / "checkpoints" / "demo"
DEMO_DATA = REPO_ROOT / "data" / "demo"
DEMO_TOKENS = REPO_ROOT / "data" / "demo_tokens"
DEMO_CONFIGS = REPO_ROOT / "configs" / "demo"
