"""Every input of a training run checked before anything heavy starts, all problems reported at once.

Checked, in seconds and without building a model (weights files are memory-mapped to read their shapes):
the weights the run starts from (present, fitting the configured architecture; the download command when missing),
the VQVAE (present, fitting, and on a resume the same file the run was trained with, by SHA-256), the training and
validation data (present and not empty), the accelerator (a GPU run on a machine without one), the output folder
(writable) and its free space (room for at least two checkpoints). A resumed run must also keep its model
(`varianttrain.training.resume.contradictions`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints import CheckpointError
from varianttrain.checkpoints.var import check_var_file
from varianttrain.checkpoints.vqvae import check_vqvae_file
from varianttrain.data.checks import data_problems
from varianttrain.file_hash import cached_sha256
from varianttrain.paths import output_folder_problem

GB = 1e9


class PreflightError(RuntimeError):
    """The run cannot start; `problems` are one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot start: {len(problems)} problem(s)\n{lines}")


def checkpoint_bytes(cfg: Any) -> int | None:
    """Estimated size of one training checkpoint: fp32 weights + AdamW's two moments + the EMA copy (+ a VQVAE
    without a file, which then has to travel inside the checkpoint). None for tasks without a VAR."""
    model = getattr(cfg, "model", None)
    if model is None or not hasattr(model, "var_config"):
        return None
    from varianttrain.models.var import VAR
    from varianttrain.models.vqvae import VQVAE

    with torch.device("meta"):
        params = sum(p.numel() for p in VAR(model.var_config()).parameters())
        vqvae = 0 if model.vqvae_checkpoint else sum(t.numel() for t in VQVAE(model.vqvae).state_dict().values())
    per_param = 4 + 8 + (4 if getattr(getattr(cfg, "ema", None), "enabled", False) else 0)
    return params * per_param + 4 * vqvae


def weights_problems(cfg: Any, resuming: bool, saved_vqvae_sha256: str | None) -> list[str]:
    """The VAR the run starts from and the frozen VQVAE (supernet / pretrain tasks)."""
    model = getattr(cfg, "model", None)
    if model is None or not hasattr(model, "var_config"):
        return []
    problems = []
    if not resuming and model.init in ("pretrained", "checkpoint"):
        try:
            check_var_file(model.var_checkpoint, model.var_config(), prefer_ema=model.init_from_ema)
        except CheckpointError as err:
            problems.append(f"model.var_checkpoint: {err}")
    if model.vqvae_checkpoint:
        try:
            check_vqvae_file(model.vqvae_checkpoint, model.vqvae)
        except CheckpointError as err:
            problems.append(f"model.vqvae_checkpoint: {err}")
        else:
            found = cached_sha256(model.vqvae_checkpoint) if resuming and saved_vqvae_sha256 else None
            if found is not None and found != saved_vqvae_sha256:
                problems.append(f"model.vqvae_checkpoint: {model.vqvae_checkpoint} is not the VQVAE this run was "
                                f"trained with (SHA-256 {found[:12]}..., the checkpoint "
                                f"recorded {saved_vqvae_sha256[:12]}...); point it at the original file")
    return problems


def accelerator_problems(cfg: Any) -> list[str]:
    trainer = cfg.trainer
    if trainer.accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            return [f"trainer.accelerator={trainer.accelerator!r} but this machine has no usable CUDA device "
                    "(torch.cuda.is_available() is False); for a CPU run pass --set trainer.accelerator=cpu"]
        if trainer.devices > torch.cuda.device_count():
            return [f"trainer.devices={trainer.devices} but only {torch.cuda.device_count()} CUDA device(s) are "
                    "visible; set trainer.devices to match"]
    return []


def output_problems(cfg: Any, resuming_dir: Path | None) -> list[str]:
    """The run folder can be written, and has room for at least two checkpoints."""
    target = resuming_dir if resuming_dir is not None else Path(cfg.run.root) / cfg.run.name
    root, why = output_folder_problem(target)
    if why is not None:
        return [f"run.root={cfg.run.root!r}: {target} cannot be created in {root}: {why}; choose another --set "
                "run.root"]
    need = checkpoint_bytes(cfg)
    if need is not None:
        free = shutil.disk_usage(root).free
        if free < 2 * need:
            return [f"run.root={cfg.run.root!r}: {free / GB:.1f} GB free at {root}, but one checkpoint of this model "
                    f"takes about {need / GB:.1f} GB and a run needs room for at least two (one is written before "
                    "the previous one is removed); free space or choose another run.root"]
    return []


def check_training_inputs(cfg: Any, resuming_dir: Path | None = None,
                          saved_vqvae_sha256: str | None = None) -> list[str]:
    """Every problem with the inputs of a run (empty: it can start)."""
    problems = weights_problems(cfg, resuming_dir is not None, saved_vqvae_sha256)
    problems += data_problems(cfg.data)
    problems += accelerator_problems(cfg)
    problems += output_problems(cfg, resuming_dir)
    return problems
