"""The training preflight: every input checked before anything is built, all problems at once, exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers_training import REPO_ROOT, SMOKE_CONFIG, subprocess_env, tiny_overrides
from peak_rss import run_with_peak_rss

import varianttrain.paths
from varianttrain.tasks import TASKS
from varianttrain.training import preflight
from varianttrain.training.preflight import check_training_inputs, checkpoint_bytes
from varianttrain.training.runner import EXIT_BAD_INPUT, run
from varianttrain.training.tasks import load_run_config


def test_the_documented_d30_command_in_an_empty_folder_names_every_missing_input(tmp_path):
    """`python train.py --config supernet_d30.yaml` with nothing downloaded: exit 2, every problem, the fixes."""
    proc, peak_kb = run_with_peak_rss(REPO_ROOT / "train.py", ["--config", "supernet_d30.yaml"], tmp_path,
                                      subprocess_env(), tmp_path.parent / f"{tmp_path.name}_peak_kb")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-2000:]
    err = proc.stderr
    assert "configs/supernet_d30.yaml" in err  # says which file the name resolved to
    assert "python -m varianttrain.download var_d30" in err
    assert "python -m varianttrain.download vqvae" in err
    assert "data.train_path" in err and "data.val_path" in err
    if not torch.cuda.is_available():
        assert "trainer.accelerator='gpu'" in err and "--set trainer.accelerator=cpu" in err
    assert err.count("cannot start") == 1  # one report, not one line per layer
    assert not (tmp_path / "runs").exists()
    # The 2 B-parameter model was never built: the whole check stays far below its 8 GB.
    assert 0 < peak_kb < 1024 * 1024, f"peak RSS {peak_kb / 1024:.0f} MB"


def test_problems_are_collected_not_stopped_at_the_first(tmp_path):
    _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path, **{
        "model.init": "pretrained", "model.var_checkpoint": str(tmp_path / "missing_var.pth"),
        "data.val_path": str(tmp_path / "no_val"), "trainer.accelerator": "gpu"}), tasks=TASKS)
    problems = check_training_inputs(cfg)
    text = "\n".join(problems)
    assert "missing_var.pth does not exist" in text
    assert "no_val does not exist" in text
    if not torch.cuda.is_available():
        assert "trainer.accelerator" in text
    assert len(problems) >= 2


def test_empty_data_folders_are_problems(tmp_path):
    empty = tmp_path / "empty_folder"
    (empty / "class0").mkdir(parents=True)
    _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path, **{
        "data.format": "imagefolder", "data.train_path": str(empty), "data.val_path": "null"}), tasks=TASKS)
    assert any("no images" in p for p in check_training_inputs(cfg))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_run_root_is_a_problem(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path, **{"run.root": str(root)}), tasks=TASKS)
        assert any("not writable" in p for p in check_training_inputs(cfg))
    finally:
        root.chmod(0o700)


def test_read_only_run_root_is_detected_through_access(tmp_path, monkeypatch):
    """The same check with the permission answer faked, so it also runs as root (CI containers)."""
    real_access = os.access
    monkeypatch.setattr(varianttrain.paths.os, "access",
                        lambda p, mode: False if "runs" in str(p) else real_access(p, mode))
    (tmp_path / "runs").mkdir()
    _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path), tasks=TASKS)
    assert any("is not writable" in p for p in check_training_inputs(cfg))


def test_a_full_disk_is_a_problem_before_anything_is_written(tmp_path, monkeypatch, capsys):
    _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path), tasks=TASKS)
    need = checkpoint_bytes(cfg)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: type("U", (), {"free": need})())
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path)) == EXIT_BAD_INPUT
    assert "room for at least two" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_checkpoint_size_estimate_is_16_bytes_per_parameter_with_ema():
    _, cfg = load_run_config(REPO_ROOT / "configs" / "supernet_d30.yaml", tasks=TASKS)
    assert checkpoint_bytes(cfg) == 2_010_020_356 * 16  # fp32 weights + 2 AdamW moments + EMA


def test_a_vqvae_file_given_as_the_var_is_named_a_vqvae(tmp_path):
    from varianttrain.models.vqvae import VQVAE, VQVAEConfig

    path = tmp_path / "vae.pth"
    torch.save(VQVAE(VQVAEConfig(vocab_size=64, z_channels=16, ch=32, patch_nums=(1, 2, 3, 4))).state_dict(), path)
    _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path, **{
        "model.init": "pretrained", "model.var_checkpoint": str(path)}), tasks=TASKS)
    assert any("is a VQVAE checkpoint" in p for p in check_training_inputs(cfg))


def test_a_pickle_with_code_is_refused_without_torch_advice(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    path = tmp_path / "random.pth"
    torch.save({"x": Payload()}, path)
    _, cfg = load_run_config(SMOKE_CONFIG, tiny_overrides(tmp_path, **{
        "model.init": "pretrained", "model.var_checkpoint": str(path)}), tasks=TASKS)
    text = "\n".join(check_training_inputs(cfg))
    assert "is not a weights file" in text
    assert "weights_only=False" not in text and "weights_only" not in text


def test_supernet_d30_parameter_count_matches_the_release():
    from varianttrain.models.var import VAR

    _, cfg = load_run_config(Path(REPO_ROOT / "configs" / "supernet_d30.yaml"), tasks=TASKS)
    with torch.device("meta"):
        assert sum(p.numel() for p in VAR(cfg.model.var_config()).parameters()) == 2_010_020_356
