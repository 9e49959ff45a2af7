"""Shared helpers of the training-system tests: tiny pre-tokenised data and tiny run configs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from varianttrain.data.datamodule import write_index_dataset

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO_ROOT / "configs" / "smoke_cpu.yaml"
TOKENS = 30  # patch_nums (1, 2, 3, 4)
VOCAB, CLASSES = 64, 10


def write_token_data(root: Path, n_train: int = 64, n_val: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Pre-tokenised train/val splits with learnable structure (tokens depend on the label)."""
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("train", n_train), ("val", n_val)):
        labels = rng.integers(0, CLASSES, size=n)
        idx = (labels[:, None] * 5 + rng.integers(0, 8, size=(n, TOKENS))) % VOCAB
        out.append(write_index_dataset(root / split, idx, labels))
    return out[0], out[1]


def tiny_overrides(root: Path, **extra) -> list[str]:
    """--set overrides turning configs/smoke_cpu.yaml into a fast deterministic run on data under `root`."""
    train, val = root / "tokens" / "train", root / "tokens" / "val"
    if not (train / "meta.json").is_file():
        write_token_data(root / "tokens")
    values = {
        "data.format": "indices", "data.train_path": str(train), "data.val_path": str(val), "data.batch_size": 4,
        "trainer.global_batch_size": 8, "trainer.max_steps": 6, "trainer.ckpt_every_n_steps": 3,
        "trainer.log_every_n_steps": 1, "trainer.progress_bar": False, "trainer.cpu_threads": 1,
        "validation.every_n_steps": 0, "run.root": str(root / "runs"),
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def run_dirs(root: Path, name: str = "smoke_cpu") -> list[Path]:
    base = root / "runs" / name
    return sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def read_metrics(run_dir: Path) -> list[dict]:
    """CSV metrics of a run, including those of resumed segments (logs/csv, logs/csv_resume1, ...)."""
    rows: list[dict] = []
    for path in sorted((run_dir / "logs").glob("csv*/metrics.csv")):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def step_series(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of a per-step training metric from the CSV log."""
    return {int(r["step"]): float(r[key]) for r in read_metrics(run_dir) if r.get(key)}


def read_audit(run_dir: Path) -> dict[int, list[dict]]:
    """{rank: records} written by trainer.audit_subnets."""
    out = {}
    for path in sorted((run_dir / "subnets").glob("rank*.jsonl")):
        out[int(path.stem[4:])] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VARIANTTRAIN_RUN_DIR", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_train(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(*args), cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
