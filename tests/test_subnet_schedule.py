"""The subnet probability p(t), the per-step subnet choice and the schedule callback's resume behaviour."""

from __future__ import annotations

import random

import pytest
import torch
from helpers_training import SMOKE_CONFIG, run_dirs, step_series, tiny_overrides

from varianttrain.training.callbacks import ProgressiveSubnetSchedule
from varianttrain.training.config import ScheduleConfig
from varianttrain.training.runner import run
from varianttrain.training.subnet_schedule import choose_subnet, progressive_p, schedule_progress, subnet_probability


def test_progressive_p_phase_boundaries_and_ramp():
    E1, E2 = 5, 20  # paper defaults: 5 joint epochs, 15 ramp epochs
    assert progressive_p(0, 5, 15) == 0.2
    assert progressive_p(4.999, 5, 15) == 0.2
    assert progressive_p(E1, 5, 15) == pytest.approx(0.2)
    for t in (6, 10, 12.5, 19):
        assert progressive_p(t, 5, 15) == pytest.approx(0.2 + 0.8 * (t - E1) / (E2 - E1))
    assert progressive_p(E2, 5, 15) == 1.0
    assert progressive_p(29.9, 5, 15) == 1.0


def test_schedule_modes_and_units():
    fixed = ScheduleConfig(mode="fixed", fixed_ratio=0.1)
    assert subnet_probability(fixed, 0) == subnet_probability(fixed, 1e9) == 0.1
    epochs = ScheduleConfig()
    assert schedule_progress(epochs, 250, steps_per_epoch=100) == 2.5
    assert subnet_probability(epochs, schedule_progress(epochs, 1000, 100)) == pytest.approx(0.2 + 0.8 * 5 / 15)
    steps = ScheduleConfig(unit="steps", phase1=10, phase2=10)
    assert subnet_probability(steps, schedule_progress(steps, 15, None)) == pytest.approx(0.6)
    with pytest.raises(ValueError):
        schedule_progress(epochs, 5, None)


def test_choose_subnet_is_pure_and_has_the_right_frequencies():
    torch.manual_seed(123)
    random.seed(5)
    a = [choose_subnet(7, s, 0.3, (16, 8, 4, 2)) for s in range(4000)]
    torch.manual_seed(999)
    random.seed(6)
    assert a == [choose_subnet(7, s, 0.3, (16, 8, 4, 2)) for s in range(4000)]  # no global RNG involved
    assert a != [choose_subnet(8, s, 0.3, (16, 8, 4, 2)) for s in range(4000)]
    sub = [d for d in a if d is not None]
    assert abs(len(sub) / len(a) - 0.3) < 0.03
    for d in (16, 8, 4, 2):
        assert abs(sub.count(d) / len(sub) - 0.25) < 0.05
    assert all(choose_subnet(1, s, 0.0, (2,)) is None for s in range(100))
    assert all(choose_subnet(1, s, 1.0, (2,)) == 2 for s in range(100))


def test_callback_state_round_trip():
    cb = ProgressiveSubnetSchedule(ScheduleConfig(), (16, 8), seed=3)
    cb.steps_per_epoch, cb.last_step, cb.last_p = 1251.0, 9000, 0.5
    fresh = ProgressiveSubnetSchedule(ScheduleConfig(), (16, 8), seed=3)
    fresh.load_state_dict(cb.state_dict())
    assert fresh.steps_per_epoch == 1251.0 and fresh.p_at(9000) == cb.p_at(9000)


def test_resume_in_phase_two_continues_the_curve(tmp_path):
    """Stop at step 6 (inside the ramp), resume to step 12: same (step, p, depth) as an uninterrupted run."""
    sched = {"supernet.schedule.unit": "steps", "supernet.schedule.phase1": 3, "supernet.schedule.phase2": 8}
    full = tmp_path / "full"
    assert run(str(SMOKE_CONFIG), tiny_overrides(full, **sched, **{"trainer.max_steps": 12})) == 0
    part = tmp_path / "part"
    assert run(str(SMOKE_CONFIG), tiny_overrides(part, **sched, **{"trainer.max_steps": 6})) == 0
    (run_dir,) = run_dirs(part)
    assert run(None, ["trainer.max_steps=12"], resume=str(run_dir)) == 0
    (ref_dir,) = run_dirs(full)
    for key in ("train/p", "train/depth"):
        ref, resumed = step_series(ref_dir, key), step_series(run_dir, key)
        assert resumed == ref, key
    assert 0.2 < step_series(run_dir, "train/p")[7] < 1.0  # step index 6 is in phase 2
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
