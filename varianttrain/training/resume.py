"""Resuming a run: which checkpoint, checked how, and which settings a resumed run may not change.

Candidates are the run's checkpoint files (the step pool and `on_exception.ckpt`; `last.ckpt` is only a link),
ordered by the optimizer step they hold, newest first. Each is checked record by record against the CRC-32s its zip
container stores (streamed: a 32 GB file reads in well under a minute and needs little memory), then opened
weights-only (never running code from the file, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says) with its tensors
memory-mapped, and accepted when it has the training state and every tensor is readable to its end. A file that
fails is renamed `<name>.unreadable` (kept for inspection, out of the candidates and of pruning) and the next one
is tried; the run says which file it resumed from and which it skipped.

A resumed run trains the model it was started with: a `--set` that changes the architecture, the EMA or the
subnets contradicts the checkpoint and is refused, naming both values.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varianttrain.checkpoints import CheckpointError
from varianttrain.checkpoints.files import read_verified
from varianttrain.training.checkpointing import CRASH, STEP_FILE

log = logging.getLogger(__name__)

# Settings that define the model and its state layout: a resumed run must keep them (dotted config keys).
MODEL_KEYS = ("task", "model.depth", "model.embed_dim", "model.num_heads", "model.patch_nums", "model.num_classes",
              "model.vqvae", "model.shared_aln", "ema.enabled", "supernet.depth_choices", "supernet.bridge_scales",
              "supernet.subset_rule")


@dataclass
class ResumeChoice:
    """The checkpoint a run resumes from, its step, and what was skipped on the way."""

    path: Path
    global_step: int
    skipped: list[str] = field(default_factory=list)
    saved_config: dict[str, Any] | None = None  # the run config stored in the checkpoint (supernet tasks)
    vqvae_sha256: str | None = None  # hash of the VQVAE file the run was trained with, when recorded


def _candidates(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    return [p for p in ckpt_dir.iterdir()
            if p.is_file() and not p.is_symlink() and (STEP_FILE.match(p.name) or p.name == CRASH)]


def _open(path: Path) -> dict:
    ckpt = read_verified(path)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise CheckpointError("not a training checkpoint (no state_dict / global_step)")
    return ckpt


def choose_checkpoint(run_dir: Path, set_aside: bool = True) -> ResumeChoice:
    """The newest checkpoint of `run_dir` that opens (see the module docstring); CheckpointError if none does.

    `set_aside`: rename files that do not open to `<name>.unreadable` (one process per run does this: rank 0).
    """
    ckpt_dir = run_dir / "checkpoints"
    opened: list[tuple[int, float, Path, dict]] = []
    skipped: list[str] = []
    for path in _candidates(ckpt_dir):
        try:
            ckpt = _open(path)
        except Exception as err:  # noqa: BLE001 - any failure to open means "not this one"
            skipped.append(f"{path.name} ({str(err).splitlines()[0][:160] if str(err) else type(err).__name__})")
            if set_aside:
                os.replace(path, path.with_name(path.name + ".unreadable"))
            continue
        opened.append((int(ckpt["global_step"]), path.stat().st_mtime, path, ckpt))
    if not opened:
        detail = f"; unreadable (renamed *.unreadable): {', '.join(skipped)}" if skipped else ""
        raise CheckpointError(f"--resume: {ckpt_dir} holds no usable checkpoint{detail}. Start a new run without "
                              "--resume")
    step, _, path, ckpt = max(opened, key=lambda o: (o[0], o[1]))
    meta = ckpt.get("varianttrain") if isinstance(ckpt.get("varianttrain"), Mapping) else {}
    return ResumeChoice(path=path, global_step=step, skipped=skipped, saved_config=meta.get("config"),
                        vqvae_sha256=meta.get("vqvae_sha256"))


def _lookup(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def contradictions(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Model-defining settings whose resumed value differs from the checkpoint's, as 'key: checkpoint X, now Y'."""
    out = []
    for key in MODEL_KEYS:
        old, new = _lookup(saved, key), _lookup(current, key)
        if old is not None and json.dumps(old, sort_keys=True) != json.dumps(new, sort_keys=True):
            out.append(f"{key}: the checkpoint was trained with {old!r}, the resumed config says {new!r}")
    return out


class RunLock:
    """An exclusive lock on a run directory for the life of this process (`<run>/.train.lock`).

    Two processes training into one run directory would interleave checkpoints; the second one is refused with
    the holder's process id, host and start time. The operating system releases the lock when the process ends,
    however it ends.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".train.lock"
        self._handle = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the life of the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(f"run directory {self.path.parent} is in use by {holder}; wait for that run to "
                                  "finish or stop it before resuming") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
