"""Is the configured data there, and is there anything in it? Checked before a run builds anything.

Every problem is returned as one line that names the config key, the path and what to do, so a training run can
report all of them at once instead of failing inside the data loader after the model is built.
"""

from __future__ import annotations

import os
from pathlib import Path

from varianttrain.data.config import DataConfig
from varianttrain.data.webdataset_pipeline import expand_shards, missing_local_shards

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
SHARD_HELP = "write shards with `python -m varianttrain.data.shards` (data/README.md)"


def data_problems(cfg: DataConfig) -> list[str]:
    """Problems with `data.train_path` and `data.val_path` (empty list: both are usable)."""
    problems = []
    for key in ("train_path", "val_path"):
        path = getattr(cfg, key)
        if path is not None:
            problems += _path_problems(cfg.format, f"data.{key}", path) or \
                _label_problems(cfg.format, f"data.{key}", path, cfg.num_classes)
    return problems


def _label_problems(fmt: str, key: str, path: str, num_classes: int) -> list[str]:
    """Labels the model has no class for, found before training instead of as a crash (or, for webdataset, as
    samples silently counted corrupt) hours in."""
    if fmt == "imagefolder":
        n = sum(1 for d in Path(path).iterdir() if d.is_dir())
        if n > num_classes:
            return [f"{key}: {path} has {n} class folders but data.num_classes={num_classes}; ImageFolder labels "
                    f"are the sorted folder indices 0..{n - 1}: set data.num_classes and model.num_classes to {n}"]
    elif fmt == "indices" and (Path(path) / "labels.npy").is_file():
        import numpy as np

        top = int(np.load(Path(path) / "labels.npy", mmap_mode="r").max())
        if top >= num_classes:
            return [f"{key}: {path} has label {top} but data.num_classes={num_classes} (labels must be "
                    f"0..{num_classes - 1}); set data.num_classes and model.num_classes to at least {top + 1}"]
    return []


def _path_problems(fmt: str, key: str, path: str) -> list[str]:
    if fmt == "webdataset":
        shards = expand_shards(path)
        if not shards:
            return [f"{key}={path!r} matches no shard files; {SHARD_HELP}"]
        missing = missing_local_shards(shards)
        if missing:
            return [f"{key}={path!r}: {len(missing)} of {len(shards)} shards missing, first {missing[0]}; "
                    f"{SHARD_HELP}"]
        empty = [s for s in shards if "://" not in s and not s.startswith("pipe:") and os.path.getsize(s) == 0]
        if empty:
            return [f"{key}={path!r}: {len(empty)} shard file(s) are empty, first {empty[0]}; write them again"]
        return []
    root = Path(path)
    if not root.is_dir():
        return [f"{key}: directory {path} does not exist (data.format {fmt!r}; data/README.md)"]
    if fmt == "imagefolder":
        classes = [d for d in root.iterdir() if d.is_dir()]
        if not classes:
            return [f"{key}: {path} has no class folders (ImageFolder layout: {path}/<class>/<image>)"]
        if not any(f.suffix in IMAGE_SUFFIXES for d in classes for f in d.iterdir()):
            return [f"{key}: {path} has {len(classes)} class folders but no images in them"]
        return []
    if fmt == "indices":
        stems = {p.stem for p in root.iterdir() if p.suffix in (".npy", ".pt")}
        if not {"idx", "labels"} <= stems:
            return [f"{key}: {path} needs idx.npy and labels.npy (or .pt); write them with "
                    "varianttrain.data.datamodule.write_index_dataset"]
        if (root / "labels.npy").is_file():
            import numpy as np

            if np.load(root / "labels.npy", mmap_mode="r").shape[0] == 0:
                return [f"{key}: {path} holds no sequences (labels.npy is empty)"]
    return []
