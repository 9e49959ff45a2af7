"""The demo classifier file (`classifier.pt`): written by the `classifier` task and the demo's shipping step, read
as a `DemoFeatureExtractor` by eval.py (`metrics.extractor=demo-classifier`) and the demo.

One `torch.save` mapping, loadable with `weights_only=True`:

    {"format": CLASSIFIER_FORMAT, "format_version": 1, "arch": {DemoClassifierNet constructor arguments},
     "resolution": training image side or None, "state_dict": {...}, "task_config": {...}, ... the writer's extras}

A Lightning checkpoint of the `classifier` task is read too (network under `net.`, architecture from its
`task_cfg` hyper-parameters, resolution from the `train_resolution` buffer).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints.files import CheckpointError
from varianttrain.models.demo_classifier import DemoClassifierNet, DemoFeatureExtractor, net_arch

CLASSIFIER_FORMAT = "varianttrain-demo-classifier"  # "format" entry of a classifier file
CLASSIFIER_FORMAT_VERSION = 1


def save_demo_classifier(path: str | Path, state: Mapping[str, torch.Tensor], arch: Mapping[str, Any],
                         resolution: int | None, task_config: Mapping[str, Any], **extra: Any) -> Path:
    """Write a classifier file (module docstring); `resolution` None = inputs are used at their own size."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CLASSIFIER_FORMAT, "format_version": CLASSIFIER_FORMAT_VERSION, "arch": dict(arch),
                "resolution": resolution, "state_dict": dict(state), "task_config": dict(task_config), **extra}, path)
    return path


def load_demo_extractor(path: str | Path, device: str | torch.device = "cpu") -> DemoFeatureExtractor:
    """Load a classifier file (or a `classifier` task Lightning checkpoint) as a frozen feature extractor.

    Raises:
        FileNotFoundError: no file at `path` (the message says how to produce one).
        CheckpointError: the file is unreadable or is not a demo classifier.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"demo classifier file {path} does not exist: train the `classifier` task on the demo dataset and export "
            "it (ClassifierModule.export writes classifier.pt; see docs/DEMO_MODELS.md)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(f"could not read {path} as a PyTorch file: {err}") from err
    if isinstance(obj, Mapping) and obj.get("format") == CLASSIFIER_FORMAT:
        arch, state, resolution = obj.get("arch"), obj.get("state_dict"), obj.get("resolution")
    elif isinstance(obj, Mapping) and isinstance(obj.get("hyper_parameters"), Mapping) and "task_cfg" in obj[
            "hyper_parameters"] and isinstance(obj.get("state_dict"), Mapping):  # Lightning checkpoint of the task
        try:
            arch = net_arch(obj["hyper_parameters"]["task_cfg"])
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: not a `classifier` task checkpoint: {err}") from err
        state = {k[len("net."):]: v for k, v in obj["state_dict"].items() if k.startswith("net.")}
        resolution = int(obj["state_dict"].get("train_resolution", torch.tensor(0)))
    else:
        keys = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path} is not a demo classifier file (expected format {CLASSIFIER_FORMAT!r} written "
                              f"by ClassifierModule.save_classifier); found {keys}")
    if not isinstance(arch, Mapping) or not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: demo classifier file without 'arch' / 'state_dict' entries")
    try:
        net = DemoClassifierNet(**arch)
        net.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the weights do not fit the recorded architecture {dict(arch)}: {err}") from err
    return DemoFeatureExtractor(net, resolution=int(resolution) if resolution else None).to(device)
