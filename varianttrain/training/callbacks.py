"""Callbacks of the training system: the VARiant subnet schedule, the per-step RNG reseed for exact resume, and a
progress bar that counts optimizer steps (so it can show an ETA).

SIGTERM needs no callback of ours: Lightning 2.6 forwards it to every rank and raises `SIGTERMException` after the
current batch; `OnExceptionCheckpoint` (added by the runner) writes `on_exception.ckpt`, and the runner turns the
exception (a `SystemExit` without a code, i.e. status 0) into exit status 143 (docs/REFERENCES.md L1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from varianttrain.training.config import ScheduleConfig
from varianttrain.training.subnet_schedule import (
    choose_subnet,
    schedule_progress,
    step_rng_seed,
    subnet_probability,
)

log = logging.getLogger(__name__)


class ProgressiveSubnetSchedule(L.Callback):
    """Sets `pl_module.set_active_subnet(p, depth)` before every micro-batch from (seed, trainer.global_step).

    p(t) follows `subnet_probability` (three-phase progressive curve, or fixed ratio); t is counted in optimizer
    steps or fractional epochs. `global_step` is equal on every rank, constant over the micro-batches of one
    accumulated step and restored exactly on resume, so all ranks train the same subnet and a resumed run
    continues the curve. State saved in checkpoints: the schedule, the choices, the seed, the number of optimizer
    steps per epoch (kept from the checkpoint on resume, so the epoch-based curve does not jump if the batch size
    changes) and the last (step, p, depth).
    """

    def __init__(self, schedule: ScheduleConfig, depth_choices: Sequence[int], seed: int):
        self.schedule = schedule
        self.depth_choices = tuple(depth_choices)
        self.seed = seed
        self.steps_per_epoch: float | None = None
        self.last_step: int | None = None
        self.last_p: float | None = None
        self.last_depth: int | None = None

    def p_at(self, global_step: int) -> float:
        """p for optimizer step `global_step` (needs steps_per_epoch for an epoch-based schedule)."""
        return subnet_probability(self.schedule, schedule_progress(self.schedule, global_step, self.steps_per_epoch))

    def _ensure_steps_per_epoch(self, trainer: L.Trainer) -> None:
        if self.steps_per_epoch is not None or self.schedule.unit == "steps":
            return
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError("supernet.schedule.unit='epochs' needs a train loader with a length; use unit 'steps'")
        self.steps_per_epoch = float(math.ceil(batches / trainer.accumulate_grad_batches))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Phase 3 has no length of its own (it lasts until training stops): say when the run is too short for it.
        if self.schedule.mode != "progressive" or not getattr(trainer, "is_global_zero", True):  # said once
            return
        self._ensure_steps_per_epoch(trainer)
        total_steps = trainer.estimated_stepping_batches  # min of max_steps and max_epochs, in optimizer steps
        if not math.isfinite(total_steps) or total_steps < 0:  # -1: epochs of a loader without a length
            return
        end = schedule_progress(self.schedule, int(total_steps), self.steps_per_epoch)
        ramp_end = self.schedule.phase1 + self.schedule.phase2
        if end < ramp_end:
            log.warning("training stops at %g %s, before supernet.schedule.phase1 + phase2 = %g: p never reaches "
                        "p_end = %g and there is no phase 3; lengthen the run or shorten the phases", end,
                        self.schedule.unit, ramp_end, self.schedule.p_end)
        else:
            log.info("subnet schedule: phase 3 (p = %g) lasts %g %s", self.schedule.p_end, end - ramp_end,
                     self.schedule.unit)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._ensure_steps_per_epoch(trainer)
        step = trainer.global_step
        p = self.p_at(step)
        depth = choose_subnet(self.seed, step, p, self.depth_choices)
        pl_module.set_active_subnet(p, depth)
        self.last_step, self.last_p, self.last_depth = step, p, depth

    def state_dict(self) -> dict:
        return {"schedule": dataclasses.asdict(self.schedule), "depth_choices": list(self.depth_choices),
                "seed": self.seed, "steps_per_epoch": self.steps_per_epoch, "last_step": self.last_step,
                "last_p": self.last_p, "last_depth": self.last_depth}

    def load_state_dict(self, state: dict) -> None:
        # The run config wins for the curve itself, but differences are reported; steps_per_epoch is taken from
        # the checkpoint so the position on the curve is unchanged. Compared field by field: checkpoints written
        # before a field was removed (phase3) still load.
        saved, current = state["schedule"], dataclasses.asdict(self.schedule)
        changed = {name: (saved.get(name), value) for name, value in current.items() if saved.get(name) != value}
        if changed:
            log.warning("subnet schedule differs from the checkpoint's (checkpoint -> config): %s",
                        ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changed.items()))
        if tuple(state["depth_choices"]) != self.depth_choices or state["seed"] != self.seed:
            log.warning("depth choices / seed differ from the checkpoint (%s, %s) -> (%s, %s)",
                        state["depth_choices"], state["seed"], self.depth_choices, self.seed)
        self.steps_per_epoch = state.get("steps_per_epoch")
        self.last_step, self.last_p, self.last_depth = state.get("last_step"), state.get("last_p"), state.get(
            "last_depth")


class StepSeed(L.Callback):
    """Reseeds torch's global RNG before every micro-batch from (seed, global_step, micro-batch, rank).

    Drop-path, label dropout and on-the-fly crops then depend only on the position in training, so a run resumed
    from any checkpoint draws exactly what an uninterrupted run draws (the global RNG state itself is not part of
    Lightning checkpoints). Ranks get different streams.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        micro = batch_idx % max(trainer.accumulate_grad_batches, 1)
        torch.manual_seed(step_rng_seed(self.seed, trainer.global_step, micro, trainer.global_rank))


class SubnetAudit(L.Callback):
    """Appends (global_step, p, depth) of every micro-batch to `<dir>/rank<R>.jsonl`, one file per rank.

    For checking that all ranks train the same subnet (a mismatch would deadlock FSDP or corrupt DDP gradients).
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": trainer.global_step, "batch_idx": batch_idx, "p": getattr(pl_module, "active_p", None),
                  "depth": getattr(pl_module, "active_depth", None)}
        with open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimizer steps out of `trainer.max_steps` instead of the batches of an epoch.

    The training data stream has no epoch length Lightning can see, so its own bar shows `225/?` and no ETA; this one
    shows `step/max_steps`, the rate and the time left, starting from the resumed step after `--resume`.
    """

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        bar = self.train_progress_bar
        if bar is not None and trainer.max_steps and trainer.max_steps > 0:
            bar.reset(total=trainer.max_steps)
            bar.initial = bar.n = trainer.global_step  # rate and ETA from the resumed step on
            bar.set_description("Training steps")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
                           ) -> None:
        if not (trainer.max_steps and trainer.max_steps > 0):
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        bar, n = self.train_progress_bar, trainer.global_step
        if bar is not None and not bar.disable and self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
        return None
