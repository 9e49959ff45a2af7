"""The demo's training tasks: `tokenizer` (the demo VQVAE) and `classifier` (the demo FID / IS network).

Each is the shared run sections (`task`, `data`, `trainer`, `run`) plus one section named after the task. The
combined table train.py uses is `varianttrain.tasks.TASKS`.
"""

from __future__ import annotations

from varianttrain.demo.classifier_task import ClassifierTaskConfig, build_classifier_module
from varianttrain.demo.tokenizer_task import TokenizerTaskConfig, build_tokenizer_module
from varianttrain.training.tasks import TaskSpec, section_task

DEMO_TASKS: dict[str, TaskSpec] = {
    "tokenizer": section_task("tokenizer", TokenizerTaskConfig, build_tokenizer_module),
    "classifier": section_task("classifier", ClassifierTaskConfig, build_classifier_module),
}
