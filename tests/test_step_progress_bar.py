"""The training progress bar counts optimizer steps out of max_steps (an ETA), also after a resume."""

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from varianttrain.training.callbacks import StepProgressBar


class Seen(L.Callback):
    def __init__(self, bar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, *_):
        self.seen.append((self.bar.train_progress_bar.n, self.bar.train_progress_bar.total))


def test_bar_counts_steps_of_max_steps_across_epochs(tmp_path):
    bar = StepProgressBar(refresh_rate=1)
    seen = Seen(bar)
    # BoringModel's loader has 64 batches per epoch: 70 steps cross an epoch boundary, where Lightning's own bar
    # would restart from 0 out of 64.
    trainer = L.Trainer(max_steps=70, callbacks=[bar, seen], logger=False, enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu", limit_val_batches=0)
    trainer.fit(BoringModel())
    assert seen.seen[0] == (1, 70) and seen.seen[-1] == (70, 70)
    assert [n for n, _ in seen.seen] == list(range(1, 71))
