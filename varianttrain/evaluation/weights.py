"""Weights for an evaluation: files opened without reading them, models built without random init, fingerprints.

* `open_weights`: a checkpoint with its tensors memory-mapped (`torch.load(mmap=True)`; safetensors lazily), so the
  pre-flight checks can read shapes and metadata of an 8 GB file in milliseconds and without memory.
* `build_var`: the VAR of a state dict, built without random initialisation (`models.build.empty_model`: every
  value is overwritten by the strict load that follows) directly on its device, then loaded from the mapped tensors.
* `Fingerprints`: SHA-256 of weight files, cached by (path, size, mtime, inode) so a rerun does not hash 8 GB again.
  The hash is what names a row's weights in the report and what ties a sample folder to the weights that made it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints import CheckpointError, load_var_weights
from varianttrain.checkpoints.files import read_file
from varianttrain.file_hash import sha256_file
from varianttrain.models.build import empty_model
from varianttrain.models.var import VAR, VARConfig


def open_weights(path: Path) -> Any:
    """The object stored in `path`, tensors memory-mapped (`checkpoints.read_file(mmap=True)`: the one reader of
    weight files). Raises `CheckpointError` naming the file when it cannot be read."""
    return read_file(path, mmap=True)


def build_var(config: VARConfig, state: Mapping[str, torch.Tensor], device: torch.device | str) -> VAR:
    """A frozen eval-mode VAR of `config` on `device` holding `state` (strict: a mismatch raises
    `CheckpointError` and nothing is used)."""
    config = dataclasses.replace(config, drop_path_rate=0.0)
    var = empty_model(lambda: VAR(config), device)
    try:
        load_var_weights(var, state)
    except KeyError as err:  # the reader looks up a few keys by name before it compares the whole dict
        raise CheckpointError(f"the VAR state dict lacks {err.args[0]!r}: the file is incomplete (nothing was "
                              "loaded)") from err
    return var.eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------- fingerprints
class Fingerprints:
    """SHA-256 of files, cached in a JSON file by resolved path, size, modification time and inode.

    Replacing a file (same path, new content) changes its size or mtime or inode, so the cache never hands out a
    stale hash for a file that was replaced.
    """

    def __init__(self, cache_file: Path | None, log: Callable[[str], None] = lambda msg: None):
        self.cache_file = cache_file
        self.log = log
        self._cache: dict[str, dict[str, Any]] = {}
        if cache_file is not None and cache_file.is_file():
            try:
                self._cache = json.loads(cache_file.read_text())
            except (OSError, ValueError):
                self._cache = {}  # a damaged cache only costs a re-hash

    @staticmethod
    def _stamp(path: Path) -> dict[str, int]:
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}

    def sha256(self, path: Path) -> str:
        path = Path(path)
        key = str(path.resolve())
        stamp = self._stamp(path)
        cached = self._cache.get(key)
        if cached is not None and all(cached.get(k) == v for k, v in stamp.items()):
            return cached["sha256"]
        from varianttrain.evaluation.progress import progress_bar

        if stamp["size"] > 256 << 20:
            self.log(f"[eval] hashing {path} ({stamp['size'] / 2**30:.1f} GiB; cached for later runs)")
        with progress_bar(total=stamp["size"], desc=f"sha256 {path.name}", unit="B", unit_scale=True,
                          min_total=256 << 20) as bar:
            digest = sha256_file(path, bar.update)
        self._cache[key] = {**stamp, "sha256": digest}
        self._save()
        return digest

    def _save(self) -> None:
        if self.cache_file is None:
            return
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_name(f".{self.cache_file.name}.tmp")
            tmp.write_text(json.dumps(self._cache, indent=1) + "\n")
            os.replace(tmp, self.cache_file)
        except OSError:
            pass  # the cache is an optimisation: a read-only or full disk only costs a re-hash next time
