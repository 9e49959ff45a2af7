"""Training system end to end on the tiny CPU config: DDP (fork, in-process) and train.py (subprocess)."""

from __future__ import annotations

import warnings

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


def test_option_vocabularies_agree_everywhere_they_are_used():
    """One subset-rule and one sampling-protocol vocabulary: training, evaluation and the samplers agree."""
    from typing import get_type_hints

    from varianttrain.evaluation.config import BudgetSection, SamplingSection
    from varianttrain.methods.budget import DepthBudget
    from varianttrain.models.depth_plan import SUBSET_RULES, SubsetRule, layer_subset
    from varianttrain.sampling.config import SAMPLING_PROTOCOLS, SamplingConfig, SamplingProtocol
    from varianttrain.training.config import SupernetConfig, ValidationConfig

    for cls in (SupernetConfig, DepthBudget):
        assert get_type_hints(cls)["subset_rule"] == SubsetRule, cls
    # eval's budget may leave the rule to the supernet's stored facts (None), never another vocabulary
    assert get_type_hints(BudgetSection)["subset_rule"] == (SubsetRule | None)
    assert get_type_hints(ValidationConfig)["sampling_protocol"] == SamplingProtocol
    assert get_type_hints(SamplingSection)["protocol"] == SamplingProtocol
    assert set(SUBSET_RULES) == {"nested", "equidistant"} and set(SAMPLING_PROTOCOLS) == {"official", "code"}
    for rule in SUBSET_RULES:  # every rule of the vocabulary is implemented
        assert len(layer_subset(8, 4, rule, (4, 2))) == 4
    assert {SamplingConfig.preset(name).top_k for name in SAMPLING_PROTOCOLS} == {900, 600}


@pytest.mark.parametrize("value", ["variant", "fast"])
def test_validation_sampling_protocol_is_checked_when_the_config_is_read(value):
    with pytest.raises(ConfigError) as info:
        load_run_config(SMOKE_CONFIG, [f"validation.sampling_protocol={value}"])
    assert info.value.key == "validation.sampling_protocol"
    assert f"expected one of 'official', 'code', got str '{value}'" in str(info.value)
    from varianttrain.training.config import ValidationConfig

    with pytest.raises(ValueError, match="validation.sampling_protocol must be one of official, code"):
        ValidationConfig(sampling_protocol=value)  # built in code, without config_io


@pytest.mark.parametrize(("overrides", "message"), [
    (["validation.sample_classes=[0, 10]"], r"validation.sample_classes \[10\] are not classes of the model"),
    (["validation.sample_classes=[]"], "validation.sample_classes must not be empty"),
    (["data.num_classes=11"], "data.num_classes=11 exceeds model.num_classes=10"),
])
def test_class_settings_the_model_cannot_honour_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(SMOKE_CONFIG, overrides)
    # No sample grids: the class list is not used, so an empty one is fine.
    load_run_config(SMOKE_CONFIG, ["validation.sample_classes=[]", "validation.sample_every_n_validations=0"])


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



def test_training_step_loss_is_var_loss_on_the_same_logits():
    """The loss that trains is `losses.var_loss` (the one the golden test pins), here with label smoothing on."""
    import torch.nn.functional as F

    from varianttrain.losses import var_loss
    from varianttrain.training.module import SupernetModule

    _, cfg = load_run_config(SMOKE_CONFIG, ["model.label_smoothing=0.1", "ema.enabled=false"])
    module = SupernetModule(cfg)
    module.set_active_subnet(1.0, 2)  # a subnet step: the flexible zone runs 2 of the 4 blocks
    captured = []
    module.var.register_forward_hook(lambda mod, args, out: captured.append(out.detach()))
    gen = torch.Generator().manual_seed(0)
    idx_BL = torch.randint(0, cfg.model.vqvae.vocab_size, (3, 30), generator=gen)
    label_B = torch.tensor([0, 4, 9])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no Trainer attached: Lightning warns that it skips self.log
        loss = module.training_step((idx_BL, label_B), 0)
    (logits_BLV,) = captured
    assert loss.requires_grad
    assert torch.equal(loss.detach(), var_loss(logits_BLV, idx_BL, label_smoothing=0.1))
    # Closed form: with L tokens per image, weights 1/L summed and averaged over images = the mean over all tokens.
    flat = F.cross_entropy(logits_BLV.reshape(-1, logits_BLV.shape[-1]), idx_BL.reshape(-1), label_smoothing=0.1)
    assert loss.item() == pytest.approx(flat.item(), rel=1e-6)
