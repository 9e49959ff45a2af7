"""Every task `train.py` can run: the supernet system's (`supernet`, `pretrain`) and the demo's (`tokenizer`,
`classifier`). Adding a task = declaring its `TaskSpec` where it lives and listing its table here."""

from __future__ import annotations

from varianttrain.demo.tasks import DEMO_TASKS
from varianttrain.training.tasks import SUPERNET_TASKS, TaskSpec

TASKS: dict[str, TaskSpec] = {**SUPERNET_TASKS, **DEMO_TASKS}
