"""Where the repository's own folders are, and how a config name given on the command line is found.

Paths inside config files (checkpoints/..., data/...) are relative to the working directory, which is the repository
root in every documented command. Only names the project itself ships (configs/, the demo files) are resolved
against the repository root, so they are found from any directory.
"""

from __future__ import annotations

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
