"""The subnet probability p(t), the per-step subnet choice and the schedule callback's resume behaviour."""

from __future__ import annotations

import dataclasses
import logging
import random
from types import SimpleNamespace

import pytest
import torch
from helpers_training import REPO_ROOT, SMOKE_CONFIG, run_dirs, step_series, tiny_overrides

from varianttrain.config_io import ConfigError
from varianttrain.training.callbacks import ProgressiveSubnetSchedule
from varianttrain.training.config import ScheduleConfig
from varianttrain.training.runner import load_run_config, run
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


def _supernet_configs():
    paths = sorted((REPO_ROOT / "configs").glob("*.yaml")) + sorted((REPO_ROOT / "configs" / "demo").glob("*.yaml"))
    return [p for p in paths if "task: supernet" in p.read_text()]


@pytest.mark.parametrize("path", _supernet_configs(), ids=lambda p: p.name)
def test_shipped_configs_reach_phase_three(path):
    """Phase 3 lasts from phase1 + phase2 to the end of training: every progressive config must get there."""
    _, cfg = load_run_config(path)
    sched, trainer = cfg.supernet.schedule, cfg.trainer
    if sched.mode != "progressive":
        return
    length = trainer.max_steps if sched.unit == "steps" else trainer.max_epochs
    assert length is not None and length > 0, "the training length must be given in the schedule's unit"
    assert length > sched.phase1 + sched.phase2


def test_d30_config_follows_the_paper_phases():
    """5 joint epochs, 15 ramp epochs, then 5-15 epochs of subnet tuning until trainer.max_epochs."""
    _, cfg = load_run_config(REPO_ROOT / "configs" / "supernet_d30.yaml")
    sched = cfg.supernet.schedule
    assert (sched.mode, sched.unit, sched.phase1, sched.phase2) == ("progressive", "epochs", 5, 15)
    assert (sched.p_start, sched.p_end) == (0.2, 1.0)
    assert 5 <= cfg.trainer.max_epochs - (sched.phase1 + sched.phase2) <= 15
    assert cfg.trainer.max_steps == -1  # the length is set in epochs only, so phase 3 is not cut short


def test_phase3_key_is_rejected_with_the_fix():
    with pytest.raises(ConfigError) as info:
        load_run_config(SMOKE_CONFIG, ["supernet.schedule.phase3=4"])
    msg = str(info.value)
    assert msg.startswith("--set supernet.schedule.phase3=4")
    assert "'supernet.schedule.phase3' was removed" in msg and "trainer.max_epochs" in msg
    assert "trainer.max_steps" in msg


def _fake_trainer(total_steps: float, batches: int = 10, accumulate: int = 1) -> SimpleNamespace:
    return SimpleNamespace(estimated_stepping_batches=total_steps, num_training_batches=batches,
                           accumulate_grad_batches=accumulate)


def test_short_run_warns_that_phase_three_is_never_reached(caplog):
    cb = ProgressiveSubnetSchedule(ScheduleConfig(unit="steps", phase1=4, phase2=8), (2, 1), seed=0)
    with caplog.at_level(logging.INFO, logger="varianttrain.training.callbacks"):
        cb.on_train_start(_fake_trainer(6), None)
    assert "training stops at 6 steps, before supernet.schedule.phase1 + phase2 = 12" in caplog.text
    caplog.clear()
    epochs = ProgressiveSubnetSchedule(ScheduleConfig(phase1=5, phase2=15), (2, 1), seed=0)
    with caplog.at_level(logging.INFO, logger="varianttrain.training.callbacks"):
        epochs.on_train_start(_fake_trainer(30 * 25, batches=50, accumulate=2), None)  # 30 epochs of 25 steps
    assert "phase 3 (p = 1) lasts 10 epochs" in caplog.text and "training stops" not in caplog.text
    caplog.clear()
    fixed = ProgressiveSubnetSchedule(ScheduleConfig(mode="fixed", unit="steps"), (2, 1), seed=0)
    with caplog.at_level(logging.INFO, logger="varianttrain.training.callbacks"):
        fixed.on_train_start(_fake_trainer(6), None)
    assert caplog.text == ""  # a fixed ratio has no phases


def test_callback_resumes_a_checkpoint_that_still_records_phase3(caplog):
    """Checkpoints written while the schedule had a phase3 field load; only real differences are reported."""
    cb = ProgressiveSubnetSchedule(ScheduleConfig(), (16, 8), seed=3)
    cb.steps_per_epoch = 1251.0
    state = cb.state_dict()
    state["schedule"] = {**dataclasses.asdict(ScheduleConfig()), "phase3": 10.0}
    fresh = ProgressiveSubnetSchedule(ScheduleConfig(), (16, 8), seed=3)
    with caplog.at_level(logging.WARNING, logger="varianttrain.training.callbacks"):
        fresh.load_state_dict(state)
    assert fresh.steps_per_epoch == 1251.0 and caplog.text == ""
    longer = ProgressiveSubnetSchedule(ScheduleConfig(phase2=20), (16, 8), seed=3)
    with caplog.at_level(logging.WARNING, logger="varianttrain.training.callbacks"):
        longer.load_state_dict(state)
    assert "phase2 15.0 -> 20" in caplog.text
