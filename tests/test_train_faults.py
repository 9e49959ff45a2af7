"""Fault tolerance of the training system: SIGKILL + resume, SIGTERM, corrupt shards, bad inputs fail fast."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_training import (
    SMOKE_CONFIG,
    read_metrics,
    run_dirs,
    subprocess_env,
    tiny_overrides,
    train_cmd,
)
from PIL import Image

from varianttrain.data.shards import write_tar_shards
from varianttrain.models.var import VAR, VARConfig
from varianttrain.training.runner import EXIT_BAD_INPUT, EXIT_SIGTERM, run


def _set_args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(*args), cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(path_glob: str, base: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = list(base.glob(path_glob))
        if hits:
            return hits[0]
        if proc.poll() is not None:
            raise AssertionError(f"train.py exited ({proc.returncode}) before {path_glob} appeared:\n"
                                 + proc.stdout.read()[-3000:])
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {path_glob}")


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(("var.", "ema."))}


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, accumulate):
    """Deterministic CPU run: killed with SIGKILL mid-epoch, resumed, it ends with bit-identical weights and EMA,
    with and without gradient accumulation (4 samples per micro-batch)."""
    extra = {"trainer.max_steps": 60, "trainer.ckpt_every_n_steps": 3, "trainer.global_batch_size": 4 * accumulate}
    # The in-process segments run with the thread count train.py gives the killed one (trainer.cpu_threads=1):
    # a CPU matmul's rounding may depend on how many threads split it.
    torch.set_num_threads(1)
    ref_root, kill_root = tmp_path / "ref", tmp_path / "kill"
    assert run(str(SMOKE_CONFIG), tiny_overrides(ref_root, **extra)) == 0
    proc = _start(["--config", str(SMOKE_CONFIG)] + _set_args(tiny_overrides(kill_root, **extra)), cwd=tmp_path)
    _wait_for("runs/smoke_cpu/000/checkpoints/step0000009.ckpt", kill_root, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = run_dirs(kill_root)
    killed_at = max(torch.load(p, weights_only=True)["global_step"]
                    for p in (run_dir / "checkpoints").glob("step*.ckpt") if p.stat().st_size)
    assert killed_at < 60, "the run finished before it was killed; the test did not exercise a resume"
    assert run(None, [], resume=str(run_dir)) == 0
    ref = _weights(run_dirs(ref_root)[0] / "checkpoints" / "last.ckpt")
    resumed = _weights(run_dir / "checkpoints" / "last.ckpt")
    assert ref.keys() == resumed.keys()
    mismatched = [k for k in ref if not torch.equal(ref[k], resumed[k])]
    assert not mismatched, f"weights differ after resume from step {killed_at}: {mismatched[:5]}"


def test_sigterm_writes_checkpoint_and_exits_nonzero(tmp_path):
    overrides = tiny_overrides(tmp_path, **{"trainer.max_steps": 100000, "trainer.ckpt_every_n_steps": 2})
    proc = _start(["--config", str(SMOKE_CONFIG)] + _set_args(overrides), cwd=tmp_path)
    _wait_for("runs/smoke_cpu/000/checkpoints/step0000002.ckpt", tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_SIGTERM, out[-3000:]
    ckpt = run_dirs(tmp_path)[0] / "checkpoints" / "on_exception.ckpt"
    assert ckpt.is_file()
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] >= 2 and "ProgressiveSubnetSchedule" in state["callbacks"]


def _png(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_corrupt_samples_are_survived_and_counted(tmp_path):
    rng = np.random.default_rng(0)
    records = []
    for i in range(48):
        data = b"this is not an image" if i % 6 == 0 else _png(rng)  # 8 corrupt samples
        records.append((f"s{i:04d}", data, "png", i % 10))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar_shards(records, str(shards / "train-%06d.tar"), maxcount=24)
    overrides = tiny_overrides(tmp_path, **{"data.format": "webdataset",
                                            "data.train_path": str(shards / "train-{000000..000001}.tar"),
                                            "data.val_path": "null", "data.epoch_length": 32,
                                            "data.shuffle_buffer": 0, "trainer.max_steps": 4})
    assert run(str(SMOKE_CONFIG), overrides) == 0
    rows = read_metrics(run_dirs(tmp_path)[0])
    skipped = [float(r["data/skipped_train"]) for r in rows if r.get("data/skipped_train")]
    assert skipped and max(skipped) >= 1


@pytest.mark.parametrize("case", ["malformed_config", "missing_checkpoint", "wrong_depth"])
def test_bad_inputs_fail_fast_and_touch_nothing(tmp_path, capsys, case):
    existing = tmp_path / "runs" / "smoke_cpu" / "000"
    (existing / "checkpoints").mkdir(parents=True)
    (existing / "config.yaml").write_text("task: supernet\n")
    (existing / "checkpoints" / "last.ckpt").write_bytes(b"previous run")
    tiny_overrides(tmp_path)  # writes the token data first, so the snapshot below includes it
    before = _tree(tmp_path)
    if case == "malformed_config":
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(SMOKE_CONFIG.read_text().replace("  bridge_scales: 2", "  bridge_scale: 2"))
        before = _tree(tmp_path)
        code, expect = run(str(cfg), tiny_overrides(tmp_path)), "supernet.bridge_scale"
    elif case == "missing_checkpoint":
        code = run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"model.init": "checkpoint",
                                                                  "model.var_checkpoint": "nope/var_d4.pth"}))
        expect = "nope/var_d4.pth"
    else:
        wrong = tmp_path / "var_d2.pth"
        torch.save(VAR(VARConfig(depth=2, embed_dim=64, num_heads=4, num_classes=10, vocab_size=64, z_channels=16,
                                 patch_nums=(1, 2, 3, 4))).state_dict(), wrong)
        before = _tree(tmp_path)
        code = run(str(SMOKE_CONFIG), tiny_overrides(tmp_path, **{"model.init": "pretrained",
                                                                  "model.var_checkpoint": str(wrong)}))
        expect = "depth 2 vs 4"
    assert code == EXIT_BAD_INPUT
    assert expect in capsys.readouterr().err  # errors go to stderr
    assert _tree(tmp_path) == before, "a failed start must not create or modify files"
    assert os.environ.get("VARIANTTRAIN_RUN_DIR") is None
