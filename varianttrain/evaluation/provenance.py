"""Where a report's numbers come from: package and library versions, the git commit, and every input file's hash.

A number without its code version and its weights is not reproducible; every report records both.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit(root: Path = REPO_ROOT) -> dict[str, Any] | None:
    """{"commit": sha, "dirty": uncommitted changes} of the checkout the code runs from, or None outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def software() -> dict[str, Any]:
    """Versions of everything that changes the numbers."""
    import torch

    import varianttrain

    return {"varianttrain": varianttrain.__version__, "git": git_commit(), "python": platform.python_version(),
            "torch": torch.__version__, "torch-fidelity": _version("torch-fidelity"),
            "torchmetrics": _version("torchmetrics"), "numpy": _version("numpy"), "scipy": _version("scipy"),
            "cuda": torch.version.cuda, "platform": platform.platform()}
