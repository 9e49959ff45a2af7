"""Training system end to end on the tiny CPU config: DDP (fork, in-process) and train.py (subprocess)."""

from __future__ import annotations

import pytest
import torch
from helpers_training import (
    SMOKE_CONFIG,
    read_audit,
    read_metrics,
    run_dirs,
    run_train,
    step_series,
    tiny_overrides,
)

from varianttrain.config_io import ConfigError
from varianttrain.tasks import TASKS
from varianttrain.training.config import TrainerConfig, derive
from varianttrain.training.runner import run
from varianttrain.training.subnet_schedule import choose_subnet
from varianttrain.training.tasks import SUPERNET_TASKS, load_run_config


def test_smoke_config_loads_and_derives():
    spec, cfg = load_run_config(SMOKE_CONFIG)
    assert spec.name == "supernet" and cfg.model.depth == 4
    d = derive(cfg.trainer, cfg.data.batch_size)
    assert (d.accumulate, d.global_batch) == (2, 16)
    assert cfg.trainer.accumulate_grad_batches is None  # derived values are never written back
    with pytest.raises(ConfigError, match="global_batch_size"):
        derive(TrainerConfig(devices=8, global_batch_size=1000, max_steps=1), per_device_batch=16)


def test_ddp_fork_two_ranks_same_subnet(tmp_path, monkeypatch):
    """2 CPU processes (ddp_fork, gloo): every micro-batch of every step trains the same subnet on both ranks."""
    monkeypatch.setenv("VARIANTTRAIN_DDP_START_METHOD", "fork")
    overrides = tiny_overrides(tmp_path, **{"trainer.devices": 2, "trainer.strategy": "ddp",
                                            "trainer.global_batch_size": 16, "trainer.max_steps": 8,
                                            "trainer.audit_subnets": "true", "validation.every_n_steps": 4,
                                            "validation.num_batches": 1})
    assert run(str(SMOKE_CONFIG), overrides) == 0
    (run_dir,) = run_dirs(tmp_path)
    audit = read_audit(run_dir)
    assert sorted(audit) == [0, 1]
    assert len(audit[0]) == 16  # 8 steps x 2 micro-batches
    assert [(r["step"], r["depth"], r["p"]) for r in audit[0]] == [(r["step"], r["depth"], r["p"]) for r in audit[1]]
    # Both micro-batches of an accumulated step share the choice, and it is choose_subnet(seed, step, p).
    for r in audit[0]:
        assert r["depth"] == choose_subnet(0, r["step"], r["p"], (2, 1))
    assert {r["depth"] for r in audit[0]} - {None}, "the schedule should have produced subnet steps"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    rows = read_metrics(run_dir)
    assert any(r.get("val/full/loss") for r in rows) and any(r.get("val/d1/acc") for r in rows)
    assert any(r.get("perf/tokens_per_s") for r in rows) and any(r.get("train/loss_flexible") for r in rows)
    assert list((run_dir / "samples").glob("*.png")), "a sample grid per validation"


def test_train_py_subprocess_ddp(tmp_path):
    """The real entry point with Lightning's launcher (re-executes train.py for rank 1), as on 8 GPUs."""
    overrides = tiny_overrides(tmp_path, **{"trainer.devices": 2, "trainer.strategy": "ddp",
                                            "trainer.global_batch_size": 16, "trainer.max_steps": 4,
                                            "trainer.audit_subnets": "true"})
    args = ["--config", str(SMOKE_CONFIG)] + [a for o in overrides for a in ("--set", o)]
    proc = run_train(args, cwd=tmp_path, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path)  # rank 1 used rank 0's directory
    audit = read_audit(run_dir)
    assert sorted(audit) == [0, 1] and len(audit[0]) == 8
    assert [(r["step"], r["depth"]) for r in audit[0]] == [(r["step"], r["depth"]) for r in audit[1]]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "tensorboard").is_dir()
    assert step_series(run_dir, "train/loss")


def test_single_process_run_learns_and_writes_run_dir(tmp_path):
    overrides = tiny_overrides(tmp_path, **{"trainer.max_steps": 12, "optim.lr": 3e-3})
    assert run(str(SMOKE_CONFIG), overrides) == 0
    assert run(str(SMOKE_CONFIG), overrides) == 0  # a second run never reuses the first one's directory
    first, second = run_dirs(tmp_path)
    assert first.name == "000" and second.name == "001"
    loss = step_series(first, "train/loss")
    assert loss[max(loss)] < loss[min(loss)]
    ckpt = torch.load(first / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    assert ckpt["callbacks"]["ProgressiveSubnetSchedule"]["last_step"] == 11


def test_pretrain_task_trains_full_network_only(tmp_path):
    overrides = tiny_overrides(tmp_path, **{"task": "pretrain", "trainer.max_steps": 4})
    assert run(str(SMOKE_CONFIG), overrides) == 0
    (run_dir,) = run_dirs(tmp_path)
    assert set(step_series(run_dir, "train/depth").values()) == {4.0}
    assert set(step_series(run_dir, "train/p").values()) == {0.0}


def test_task_table_decides_which_tasks_exist(tmp_path):
    """A task is known exactly when the table passed in lists it: train.py's full table has the demo tasks, the
    training system's own table does not (it never imports the demo)."""
    cfg = tmp_path / "tok.yaml"
    cfg.write_text("task: tokenizer\n")
    spec, typed = load_run_config(cfg, tasks=TASKS)
    assert spec.name == "tokenizer" and typed.tokenizer.vocab_size > 1 and typed.run.name == "tokenizer"
    assert set(TASKS) == set(SUPERNET_TASKS) | {"tokenizer", "classifier"}
    with pytest.raises(ConfigError, match="unknown task 'tokenizer'.*'pretrain', 'supernet'"):
        load_run_config(cfg, tasks=SUPERNET_TASKS)
    cfg.write_text("task: nonsense\n")
    with pytest.raises(ConfigError, match="unknown task"):
        load_run_config(cfg, tasks=TASKS)
