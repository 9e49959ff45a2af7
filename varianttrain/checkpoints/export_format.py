"""The VAR export format (written by `varianttrain.export`, read by eval.py and the demo).

An export is `<stem>.pth` (a bare state dict in the official key layout and order) and/or `<stem>.safetensors`
(the same tensors, the metadata also in the header under "varianttrain"), plus `<stem>.json` with the metadata:

    format, version         EXPORT_FORMAT, EXPORT_VERSION
    var_config              the `VARConfig` fields (patch_nums included): the architecture to rebuild
    vqvae_config            the `VQVAEConfig` fields; vqvae_checkpoint: the tokenizer file the run used
    depth                   D; depth_choices: the subnet depths d; bridge_scales: N (the first N scales run every block)
    subset_rule             how the subnet blocks were chosen; layer_subsets: {str(d): [block indices]}
    subnet_plan             how to run subnet d (`DepthPlan.subnet(...)`)
    sampling_protocol       the protocol used for the run's validation samples (name + `SamplingConfig` fields)
    source_checkpoint, global_step, ema, task    where the weights came from
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints.files import CheckpointError, read_file
from varianttrain.models.var import VARConfig

EXPORT_FORMAT, EXPORT_VERSION = "varianttrain-export", 1


def var_config_from_metadata(metadata: Mapping[str, Any]) -> VARConfig:
    """The `VARConfig` an export's metadata records (JSON lists back to tuples)."""
    var_kw = dict(metadata["var_config"])
    var_kw["patch_nums"] = tuple(var_kw["patch_nums"])
    return VARConfig(**var_kw)


def is_export(path: Path) -> bool:
    """Whether `path` may be an export: a `.safetensors` file, or weights with the export's `<stem>.json` beside
    them (a safetensors file without varianttrain metadata is told apart by `load_export`)."""
    return path.suffix == ".safetensors" or path.with_suffix(".json").is_file()


def safetensors_metadata(path: str | Path) -> dict[str, Any]:
    """The export metadata in a `.safetensors` header ({} when it has none); only the header is read."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    return json.loads(header["varianttrain"]) if "varianttrain" in header else {}


def load_export(path: str | Path) -> tuple[VARConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(VAR config, state dict, metadata) of an exported `.pth` or `.safetensors` (metadata from the JSON beside it,
    or from the safetensors header)."""
    path = Path(path)
    state = read_file(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        metadata = json.loads(sidecar.read_text())
    elif path.suffix == ".safetensors":
        metadata = safetensors_metadata(path)
        if not metadata:
            raise CheckpointError(f"{path} has no varianttrain metadata and no {sidecar.name} beside it")
    else:
        raise CheckpointError(f"{path}: metadata file {sidecar} not found (it is written by varianttrain.export)")
    if metadata.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: metadata format {metadata.get('format')!r} is not {EXPORT_FORMAT!r}")
    return var_config_from_metadata(metadata), state, metadata
