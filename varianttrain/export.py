"""Export a training checkpoint to release files: an official-layout `.pth` and/or `.safetensors` + metadata JSON.

    python -m varianttrain.export runs/supernet_d30/000/checkpoints/last.ckpt --out exports/variant_d30 [--ema]
        [--format pth safetensors] [--overwrite]

Writes `<out>/var_d<D>[_ema].pth` (a bare state dict in the official key layout, loadable by the official
`VAR.load_state_dict(..., strict=True)`), `<out>/var_d<D>[_ema].safetensors` (same tensors, metadata in the header)
and `<out>/var_d<D>[_ema].json`: the VAR architecture, depth choices, bridge N, the layer subset of every subnet,
the subset rule and the sampling protocol, so eval.py can run any subnet from the export alone. The format and its
reader (`load_export`) live in `varianttrain.checkpoints.export_format`.
Existing files are never replaced unless --overwrite is given. The files are written into a temporary folder next
to `--out` and only then moved into place, metadata last: a failure (an error, a full disk, a killed process)
leaves no export that looks complete, and a rerun starts afresh.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    CheckpointError,
    extract_var_state_dict,
    inspect_var_state_dict,
    read_file,
    var_config_from_metadata,
)
from varianttrain.config_io import ConfigError
from varianttrain.models.var import VAR

FORMATS = ("pth", "safetensors")


def _training_config(ckpt: dict, source: str) -> dict:
    meta = ckpt.get("varianttrain")
    if not isinstance(meta, dict) or "config" not in meta:
        raise CheckpointError(f"{source} is not a varianttrain training checkpoint (no 'varianttrain' entry with the "
                              "run config); export needs one written by train.py")
    return meta["config"]


def build_metadata(cfg_dict: dict, state: dict[str, torch.Tensor], ema: bool, source: str,
                   global_step: int | None, trained_subsets: dict | None = None) -> dict[str, Any]:
    """Everything needed to rebuild the VAR and run any subnet: architecture, subsets, bridge N, sampling protocol
    (the keys are described in `varianttrain.checkpoints.export_format`)."""
    from varianttrain.models.depth_plan import layer_subset
    from varianttrain.sampling.config import SamplingConfig
    from varianttrain.training.config import run_config_from_dict

    cfg = run_config_from_dict(cfg_dict)
    var_cfg = cfg.model.var_config()
    info = inspect_var_state_dict(state)
    if info.depth != var_cfg.depth or info.width != var_cfg.embed_dim:
        raise CheckpointError(f"{source}: weights are {info.describe()} but its config describes {var_cfg.describe()}")
    scfg = cfg.supernet
    protocol = cfg.validation.sampling_protocol
    subsets = {str(d): list(layer_subset(var_cfg.depth, d, scfg.subset_rule, scfg.depth_choices))
               for d in scfg.depth_choices}
    if trained_subsets:  # what the run trained is what the export says, whatever the rule computes today
        recorded = {str(d): [int(b) for b in blocks] for d, blocks in trained_subsets.items()}
        if set(recorded) != set(subsets):
            raise CheckpointError(f"{source}: the checkpoint trained subnets {sorted(recorded)} but its config lists "
                                  f"depth choices {sorted(subsets)}")
        subsets = recorded
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "source_checkpoint": source, "global_step": global_step,
        "ema": ema, "task": cfg.task,
        "var_config": dataclasses.asdict(var_cfg),
        "vqvae_config": dataclasses.asdict(cfg.model.vqvae), "vqvae_checkpoint": cfg.model.vqvae_checkpoint,
        "depth": var_cfg.depth, "depth_choices": list(scfg.depth_choices), "bridge_scales": scfg.bridge_scales,
        "subset_rule": scfg.subset_rule,
        "layer_subsets": subsets,
        # How to run subnet d: DepthPlan.subnet(depth, patch_nums, bridge_scales, layer_subsets[d]).
        "subnet_plan": "DepthPlan.subnet(depth, var_config.patch_nums, bridge_scales, layer_subsets[str(d)])",
        "sampling_protocol": {"name": protocol, **dataclasses.asdict(SamplingConfig.preset(protocol))},
    }


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, ema: bool = False,
                      formats: tuple[str, ...] = FORMATS, overwrite: bool = False) -> list[Path]:
    """Write the export files; returns their paths. Raises CheckpointError / FileExistsError before writing."""
    ckpt_path = Path(ckpt_path)
    ckpt = read_file(ckpt_path, mmap=True)  # tensors are read from disk as they are written out
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{ckpt_path} is not a training checkpoint")
    cfg_dict = _training_config(ckpt, str(ckpt_path))
    state = extract_var_state_dict(ckpt, str(ckpt_path), prefer_ema=ema)
    metadata = build_metadata(cfg_dict, state, ema, str(ckpt_path), ckpt.get("global_step"),
                              ckpt["varianttrain"].get("subsets"))
    # Official layout and order: the keys of a VAR's state dict (parameters and persistent buffers).
    with torch.device("meta"):
        expected = list(VAR(var_config_from_metadata(metadata)).state_dict())
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"{ckpt_path}: VAR weights do not match the official layout (missing {missing[:5]}, "
                              f"unexpected {extra[:5]})")
    ordered = {k: state[k].detach().cpu().contiguous() for k in expected}
    stem = f"var_d{metadata['depth']}" + ("_ema" if ema else "")
    out = Path(out_dir)
    targets = [out / f"{stem}.{fmt}" for fmt in formats] + [out / f"{stem}.json"]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(map(str, existing))}; pass --overwrite or "
                              "choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{stem}.partial"
    shutil.rmtree(staging, ignore_errors=True)  # left by a failed earlier attempt
    staging.mkdir()
    try:
        for fmt in formats:
            if fmt == "pth":
                torch.save(ordered, staging / f"{stem}.pth")
            else:
                from safetensors.torch import save_file

                save_file(ordered, str(staging / f"{stem}.safetensors"),
                          metadata={"varianttrain": json.dumps(metadata)})
        (staging / f"{stem}.json").write_text(json.dumps(metadata, indent=1) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for path in targets:  # weights first, the metadata JSON last: no JSON without its weights
            os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return targets


def main(argv: list[str] | None = None) -> int:
    """CLI; exit status 0 on success, 2 on a bad input or an existing output."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="training checkpoint (.ckpt) written by train.py")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights (ema.module.*)")
    parser.add_argument("--format", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--overwrite", action="store_true", help="replace existing export files")
    args = parser.parse_args(argv)
    try:
        paths = export_checkpoint(args.checkpoint, args.out, ema=args.ema, formats=tuple(args.format),
                                  overwrite=args.overwrite)
    except (CheckpointError, ConfigError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
