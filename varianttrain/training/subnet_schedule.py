"""Pure functions of the VARiant training schedule: the subnet probability p(t) and the per-step subnet choice.

VARiant (arXiv 2511.16546) trains with a dynamic subnet ratio in three phases (docs/REFERENCES.md, [VARiant]).

Everything here is a function of its arguments only (no global RNG, no hidden state), so every DDP/FSDP rank and
every micro-batch of one accumulated optimizer step computes the same answer, and a resumed run continues the
curve exactly from `trainer.global_step`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from varianttrain.training.config import ScheduleConfig

_MASK64 = (1 << 64) - 1


def progressive_p(t: float, phase1: float, phase2: float, p_start: float = 0.2, p_end: float = 1.0) -> float:
    """VARiant's dynamic ratio ([VARiant], REFERENCES.md): p_start in phase 1, a linear ramp in phase 2, then p_end.

    `t` is training progress in the unit of the phase lengths (epochs or optimizer steps). With E1 = phase1 and
    E2 = phase1 + phase2: p = p_start for t < E1; p = p_start + (p_end - p_start) (t - E1) / (E2 - E1) for
    E1 <= t < E2; p = p_end for t >= E2 (phase 3 lasts until training stops).
    """
    e1, e2 = phase1, phase1 + phase2
    if t < e1:
        return p_start
    if t >= e2:
        return p_end
    return p_start + (p_end - p_start) * (t - e1) / (e2 - e1)


def subnet_probability(schedule: ScheduleConfig, t: float) -> float:
    """p(t) for a schedule config: `fixed` returns fixed_ratio, `progressive` the three-phase curve."""
    if schedule.mode == "fixed":
        return schedule.fixed_ratio
    return progressive_p(t, schedule.phase1, schedule.phase2, schedule.p_start, schedule.p_end)


def schedule_progress(schedule: ScheduleConfig, global_step: int, steps_per_epoch: float | None) -> float:
    """Training progress t of optimizer step `global_step` in the schedule's unit (fractional epochs or steps)."""
    if schedule.unit == "steps":
        return float(global_step)
    if not steps_per_epoch or steps_per_epoch <= 0:
        raise ValueError("a schedule in epochs needs the number of optimizer steps per epoch")
    return global_step / steps_per_epoch


def mix_seed(seed: int, step: int) -> int:
    """SplitMix64 of (seed, step): a well-spread 64-bit integer without Python's randomised str hashing."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def choose_subnet(seed: int, step: int, p: float, depth_choices: Sequence[int]) -> int | None:
    """The subnet depth trained at optimizer step `step`, or None for the full network.

    With probability p a subnet step is taken and d is drawn uniformly from `depth_choices` (our choice: the paper does
    not say how d is drawn, docs/TRAINING.md); the draw depends on (seed, step) only, never on the global RNG.
    """
    if not depth_choices:
        raise ValueError("depth_choices must not be empty")
    rng = random.Random(mix_seed(seed, step))
    take_subnet = rng.random() < p
    pick = rng.randrange(len(depth_choices))  # drawn either way, so p does not shift the depth sequence
    return tuple(depth_choices)[pick] if take_subnet else None


def step_rng_seed(seed: int, step: int, micro_batch: int, rank: int) -> int:
    """Seed of the torch RNG for one micro-batch (drop-path, label dropout): exact resume, distinct per rank."""
    return mix_seed(mix_seed(mix_seed(seed, step), micro_batch), rank) & ((1 << 63) - 1)
