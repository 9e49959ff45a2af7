"""Where the repository's own folders are, and how a config name given on the command line is found.

Paths inside config files (checkpoints/..., data/...) are relative to the working directory, which is the repository
root in every documented command. Only names the project itself ships (configs/, the demo files) are resolved
against the repository root, so they are found from any directory.

`output_folder_problem` is the one check, used by train.py and eval.py before they start, that a run folder can be
created where the user asked.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"


class ConfigNotFound(FileNotFoundError):
    """A --config argument names no file; the message lists what configs/ holds."""


def resolve_config(name: str | Path) -> tuple[Path, bool]:
    """(the config file a --config argument means, whether it was looked up in configs/).

    A path that exists is used as given; otherwise a bare or relative name is looked up in the repository's
    configs/ folder (`supernet_d30.yaml`, `demo/eval.yaml`, with or without `.yaml`).
    """
    path = Path(name)
    if path.is_file():
        return path, False
    candidates = [CONFIGS / path, CONFIGS / path.with_suffix(".yaml")] if not path.is_absolute() else []
    for candidate in candidates:
        if candidate.is_file():
            return candidate, True
    available = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*.yaml")) if CONFIGS.is_dir() else []
    raise ConfigNotFound(f"config {name!r} not found (neither as a path nor in {CONFIGS}); available: "
                         + ", ".join(available))


def output_folder_problem(target: Path) -> tuple[Path, str | None]:
    """(the nearest existing folder at or above `target`, why a folder cannot be created there; None if it can).

    A file is really created and removed there (a read-only or full file system refuses everyone, root included);
    the permission bits are asked as well, so a folder this user may not write is reported even where the probe
    passes (root ignores the bits).
    """
    existing = Path(target).resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return existing, "it exists and is not a folder"
    try:
        fd, probe = tempfile.mkstemp(prefix=".varianttrain-write-test-", dir=existing)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as err:
        return existing, {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                          errno.ENOSPC: "no space left", errno.EDQUOT: "disk quota exceeded"}.get(err.errno, str(err))
    if not os.access(existing, os.W_OK | os.X_OK):
        return existing, "it is not writable by this user"
    return existing, None
