"""Checkpoints of a training run: when they are written, what `last.ckpt` is, which ones are kept.

One pool of files `checkpoints/step<NNNNNNN>.ckpt`, named by the optimizer step they hold, written

* every `trainer.ckpt_every_n_steps` optimizer steps,
* when `trainer.ckpt_every_minutes` have passed since the last one (a safety net for slow steps),
* at every epoch end when `trainer.ckpt_at_epoch_end`,
* when training ends, whatever the step count (so the final state is always on disk).

`last.ckpt` is a relative symbolic link to the newest file of the pool (a hard link where the file system has no
symbolic links), never a copy: a d30 checkpoint is ~32 GB. The newest `trainer.ckpt_keep` files are kept (by step
number; the one `last` points at is never removed). Files are written under a temporary name and renamed, so a
file under its final name is complete.

`on_exception.ckpt` (SIGTERM, a crash) is written only once training has really started after the restore of a
resumed run succeeded: a failed restore must never leave a fresh-looking checkpoint of unrestored weights behind.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import OnExceptionCheckpoint

log = logging.getLogger(__name__)

STEP_FILE = re.compile(r"^step(\d+)\.ckpt$")
LAST, CRASH = "last.ckpt", "on_exception.ckpt"


def step_file(step: int) -> str:
    return f"step{step:07d}.ckpt"


def step_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the pool, oldest first (regular files only; `last.ckpt` is a link)."""
    out = []
    if ckpt_dir.is_dir():
        for path in ckpt_dir.iterdir():
            match = STEP_FILE.match(path.name)
            if match and path.is_file() and not path.is_symlink():
                out.append((int(match.group(1)), path))
    return sorted(out)


def point_last_at(ckpt_dir: Path, target: Path) -> None:
    """Make `last.ckpt` name `target` (atomically replaced; a relative link so the run folder can move)."""
    tmp = ckpt_dir / f".{LAST}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
    except OSError:  # no symbolic links here: a second name for the same file, still no copy
        os.link(target, tmp)
    os.replace(tmp, ckpt_dir / LAST)


class RunCheckpoints(L.Callback):
    """Writes the step checkpoints of a run (see the module docstring)."""

    def __init__(self, ckpt_dir: Path, every_n_steps: int, keep: int, every_minutes: float | None,
                 at_epoch_end: bool):
        self.ckpt_dir = Path(ckpt_dir)
        self.every_n_steps = every_n_steps
        self.keep = keep
        self.every_seconds = None if not every_minutes else 60.0 * every_minutes
        self.at_epoch_end = at_epoch_end
        self._saved_step: int | None = None
        self._last_time = time.monotonic()
        self._seen_step: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen_step = self._saved_step = trainer.global_step  # a resumed run starts at its checkpoint's step
        self._last_time = time.monotonic()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._seen_step:  # a micro-batch inside an accumulated step: nothing new to save
            return
        self._seen_step = step
        due = bool(self.every_n_steps) and step % self.every_n_steps == 0
        if not due and self.every_seconds is not None:
            # Every rank must take the same decision (saving is collective): rank 0's clock decides.
            due = trainer.strategy.broadcast(time.monotonic() - self._last_time >= self.every_seconds)
        if due:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_epoch_end:
            self.save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer)  # the final state, whatever the step count

    def save(self, trainer: L.Trainer) -> None:
        """Write step<N>.ckpt for the current step (once per step), repoint last.ckpt, prune old files."""
        step = trainer.global_step
        if step == self._saved_step and (self.ckpt_dir / step_file(step)).is_file():
            return
        final = self.ckpt_dir / step_file(step)
        tmp = self.ckpt_dir / f".{final.name}.tmp"
        trainer.save_checkpoint(tmp)  # collective; the file is written by global rank 0
        self._saved_step, self._last_time = step, time.monotonic()
        if trainer.is_global_zero:
            os.replace(tmp, final)
            point_last_at(self.ckpt_dir, final)
            self.prune()
        trainer.strategy.barrier("RunCheckpoints.save")

    def prune(self) -> None:
        """Remove all but the newest `keep` step files (keep < 0: keep all); `last`'s target always stays."""
        if self.keep < 0:
            return
        pool = step_files(self.ckpt_dir)
        last = (self.ckpt_dir / LAST).resolve() if (self.ckpt_dir / LAST).exists() else None
        for _, path in pool[:max(len(pool) - max(self.keep, 1), 0)]:
            if last is not None and path.resolve() == last:
                continue
            path.unlink(missing_ok=True)
            log.info("removed old checkpoint %s (trainer.ckpt_keep=%d)", path.name, self.keep)

    def state_dict(self) -> dict:
        return {}


class StartedFlag(L.Callback):
    """Records that the first training batch ran, i.e. a resumed run restored its checkpoint successfully."""

    def __init__(self) -> None:
        self.started = False

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.started = True


class CrashCheckpoint(OnExceptionCheckpoint):
    """`on_exception.ckpt` on SIGTERM or a crash, but only after training started (see the module docstring)."""

    def __init__(self, ckpt_dir: Path, started: StartedFlag):
        super().__init__(dirpath=ckpt_dir, filename=CRASH[: -len(".ckpt")])
        self._started = started

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not self._started.started:
            log.warning("no %s written: training had not started (%s)", CRASH, type(exception).__name__)
            return
        super().on_exception(trainer, pl_module, exception)
