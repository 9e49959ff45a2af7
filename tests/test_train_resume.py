"""Runs that never lose work: checkpoint cadence and `last`, resume choice and its checks, crash checkpoints, locks,
the frozen VQVAE outside checkpoints. Every test reproduces a fault a user can run into."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers_training import SMOKE_CONFIG, run_dirs, tiny_overrides

from varianttrain.models.vqvae import VQVAE, VQVAEConfig
from varianttrain.training.resume import RunLock
from varianttrain.training.runner import EXIT_BAD_INPUT, run


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("var.", "ema."))}


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])]


def _ckpts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # in-process runs with train.py's cpu_threads (restored by conftest)


def test_last_is_the_final_state_whatever_the_cadence(tmp_path):
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"trainer.max_steps": 5,
                                                                "trainer.ckpt_every_n_steps": 3})) == 0
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_symlink() and os.readlink(last) == "step0000005.ckpt"  # a link, not a copy
    assert torch.load(last, weights_only=True)["global_step"] == 5
    assert "step0000003.ckpt" in _ckpts(run_dir)


def test_pruning_keeps_the_newest_and_last_points_at_it(tmp_path):
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"trainer.max_steps": 12,
                                                                "trainer.ckpt_every_n_steps": 3,
                                                                "trainer.ckpt_keep": 2})) == 0
    (run_dir,) = run_dirs(tmp_path)
    assert _ckpts(run_dir) == ["last.ckpt", "step0000009.ckpt", "step0000012.ckpt"]


def _damage(path: Path) -> None:
    """Damage a checkpoint inside while it stays a valid zip (and torch.load still reads it): bytes of a tensor
    record change, as on a failing disk."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data = bytearray(path.read_bytes())
    middle = offset + info.file_size // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))
    assert zipfile.is_zipfile(path)
    torch.load(path, weights_only=True)  # torch alone would load the damaged weights without a word


def test_damaged_newest_checkpoint_falls_back_and_loses_nothing(tmp_path, capsys):
    extra = {"trainer.max_steps": 6, "trainer.ckpt_every_n_steps": 3}
    ref_root, root = tmp_path / "ref", tmp_path / "run"
    assert run(str(SMOKE_CONFIG), tiny_overrides(ref_root, **extra)) == 0
    assert run(str(SMOKE_CONFIG), tiny_overrides(root, **extra)) == 0
    (run_dir,) = run_dirs(root)
    _damage(run_dir / "checkpoints" / "step0000006.ckpt")
    assert run(None, ["trainer.max_steps=6"], resume=str(run_dir)) == 0
    assert "resumed" not in capsys.readouterr().err
    names = set(_ckpts(run_dir))
    assert "step0000006.ckpt.unreadable" in names  # kept for inspection, out of the way
    assert "on_exception.ckpt" not in names and {"step0000003.ckpt", "step0000006.ckpt"} <= names
    # resumed from step 3 and trained steps 4-6 again: the same weights as the uninterrupted run
    _same_weights(run_dir / "checkpoints" / "last.ckpt", run_dirs(ref_root)[0] / "checkpoints" / "last.ckpt")


def test_failed_restore_writes_no_crash_checkpoint(tmp_path):
    """A restore that fails inside the trainer must not leave an on_exception.ckpt of unrestored weights."""
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"trainer.max_steps": 3,
                                                                "trainer.ckpt_every_n_steps": 3})) == 0
    (run_dir,) = run_dirs(tmp_path)
    before = _ckpts(run_dir)

    class BreakRestore(L.Callback):
        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            raise RuntimeError("restore failed")

        def state_dict(self):
            return {}

    with pytest.raises(RuntimeError, match="restore failed"):
        run(None, ["trainer.max_steps=6"], resume=str(run_dir), extra_callbacks=[BreakRestore()])
    assert _ckpts(run_dir) == before
    assert run(None, ["trainer.max_steps=6"], resume=str(run_dir)) == 0  # the next resume starts from step 3
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_set_that_changes_the_model_is_refused_naming_both_values(tmp_path, capsys):
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"trainer.max_steps": 3,
                                                                "trainer.ckpt_every_n_steps": 3,
                                                                "ema.enabled": "false"})) == 0
    (run_dir,) = run_dirs(tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}
    assert run(None, ["ema.enabled=true", "trainer.max_steps=6"], resume=str(run_dir)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "ema.enabled: the checkpoint was trained with False, the resumed config says True" in err
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()} == before


def test_planted_code_in_a_checkpoint_never_runs(tmp_path, monkeypatch):
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"trainer.max_steps": 3,
                                                                "trainer.ckpt_every_n_steps": 3})) == 0
    (run_dir,) = run_dirs(tmp_path)
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(run_dir / "checkpoints" / "step0000099.ckpt", "wb") as f:
        torch.save({"state_dict": {}, "global_step": 99, "payload": Payload()}, f, pickle_module=pickle)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert run(None, ["trainer.max_steps=4"], resume=str(run_dir)) == 0
    assert not marker.exists()
    assert (run_dir / "checkpoints" / "step0000099.ckpt.unreadable").is_file()


def test_a_second_process_on_the_same_run_is_refused(tmp_path, capsys):
    assert run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"trainer.max_steps": 3,
                                                                "trainer.ckpt_every_n_steps": 3})) == 0
    (run_dir,) = run_dirs(tmp_path)
    holder = RunLock(run_dir)
    holder.acquire()
    try:
        assert run(None, ["trainer.max_steps=6"], resume=str(run_dir)) == EXIT_BAD_INPUT
        assert f"is in use by process {os.getpid()}" in capsys.readouterr().err
    finally:
        holder.release()


def _vqvae_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    vq = VQVAE(VQVAEConfig(vocab_size=64, z_channels=16, ch=32, patch_nums=(1, 2, 3, 4)))
    torch.save(vq.state_dict(), path)
    return path


def test_checkpoints_leave_the_vqvae_out_and_resume_checks_its_hash(tmp_path, capsys):
    vq = _vqvae_file(tmp_path / "vqvae.pth", seed=1)
    extra = {"model.vqvae_checkpoint": str(vq), "trainer.max_steps": 6, "trainer.ckpt_every_n_steps": 3}
    ref_root, root = tmp_path / "ref", tmp_path / "run"
    assert run(str(SMOKE_CONFIG), tiny_overrides(ref_root, **extra)) == 0
    assert run(str(SMOKE_CONFIG), tiny_overrides(root, **{**extra, "trainer.max_steps": 3})) == 0
    (run_dir,) = run_dirs(root)
    ckpt = torch.load(run_dir / "checkpoints" / "step0000003.ckpt", weights_only=True)
    assert not [k for k in ckpt["state_dict"] if k.startswith("vqvae.")]
    assert ckpt["varianttrain"]["vqvae_sha256"]
    assert run(None, ["trainer.max_steps=6"], resume=str(run_dir)) == 0
    _same_weights(run_dir / "checkpoints" / "last.ckpt", run_dirs(ref_root)[0] / "checkpoints" / "last.ckpt")
    # Another file at the same path: the resume refuses, naming the mismatch.
    _vqvae_file(vq, seed=2)
    assert run(None, ["trainer.max_steps=9"], resume=str(run_dir)) == EXIT_BAD_INPUT
    assert "is not the VQVAE this run was trained with" in capsys.readouterr().err


def test_validation_reports_the_ema_weights_and_both_when_asked(tmp_path):
    from helpers_training import read_metrics

    overrides = tiny_overrides(tmp_path, **{"trainer.max_steps": 4, "trainer.ckpt_every_n_steps": 4,
                                            "validation.every_n_steps": 4, "validation.num_batches": 2,
                                            "validation.sample_every_n_validations": 0, "ema.enabled": "true",
                                            "ema.decay": 0.5, "validation.weights": "both"})
    assert run(str(SMOKE_CONFIG), overrides) == 0
    (run_dir,) = run_dirs(tmp_path)
    rows = [r for r in read_metrics(run_dir) if r.get("val/full/loss")]
    assert rows and rows[-1].get("val_raw/full/loss")
    ema_loss, raw_loss = float(rows[-1]["val/full/loss"]), float(rows[-1]["val_raw/full/loss"])
    assert ema_loss != raw_loss  # two different sets of weights were evaluated

    # val/ is the EMA: recompute it from the checkpoint's EMA weights on the same validation batches.
    from varianttrain.data.datamodule import ImageNetDataModule
    from varianttrain.losses import token_cross_entropy
    from varianttrain.tasks import TASKS
    from varianttrain.training.tasks import load_run_config

    _, cfg = load_run_config(run_dir / "config.yaml", tasks=TASKS)
    from varianttrain.training.module import SupernetModule

    module = SupernetModule(cfg, load_initial_weights=False)
    module.load_state_dict(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    dm = ImageNetDataModule(cfg.data)
    dm.setup()
    ce = []
    for i, batch in enumerate(dm.val_dataloader()):
        if i == 2:
            break
        gt, x, label = module.prepare_batch(batch)
        with torch.no_grad():
            ce.append(token_cross_entropy(module.ema.module(label, x), gt))
    assert float(torch.cat(ce).double().mean()) == pytest.approx(ema_loss, rel=1e-5)


def test_config_names_resolve_against_configs_and_print(tmp_path):
    from helpers_training import run_train

    proc = run_train(["--config", "smoke_cpu.yaml", "--print-config"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "using" in proc.stderr and "configs/smoke_cpu.yaml" in proc.stderr
    assert "task: supernet" in proc.stdout and "bridge_scales" in proc.stdout
    proc = run_train(["--config", "no_such.yaml"], cwd=tmp_path)
    assert proc.returncode == 2 and "available:" in proc.stderr and "supernet_d30.yaml" in proc.stderr


def test_resume_names_the_config_file_values_it_does_not_use(tmp_path, caplog):
    """`--config FILE --resume RUN` trains with the run's saved config: an edited value of FILE is named, not lost."""
    import logging

    from varianttrain.training.runner import resolve_run_config

    run_dir = tmp_path / "runs" / "smoke" / "000"
    run_dir.mkdir(parents=True)
    text = SMOKE_CONFIG.read_text()
    (run_dir / "config.yaml").write_text(text)
    edited = tmp_path / "edited.yaml"
    edited.write_text(text.replace("  max_steps: 16", "  max_steps: 99"))
    with caplog.at_level(logging.WARNING, logger="varianttrain.training.runner"):
        _, cfg, found = resolve_run_config(edited, [], str(run_dir))
    assert found == run_dir and cfg.trainer.max_steps == 16  # the saved config wins
    assert "trainer.max_steps (run: 16, file: 99)" in caplog.text and "--set" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="varianttrain.training.runner"):
        resolve_run_config(SMOKE_CONFIG, [], str(run_dir))  # the same file: nothing to say
    assert "not used" not in caplog.text
