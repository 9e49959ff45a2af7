"""Translate the official constructor arguments (as stored in golden files and trainer checkpoints) to configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varianttrain.models.var import VARConfig


def var_config_from_official(var_args: Mapping[str, Any], vocab_size: int, z_channels: int) -> VARConfig:
    """VARConfig from the keyword arguments of the official `VAR(...)` constructor."""
    return VARConfig(
        depth=int(var_args["depth"]), embed_dim=int(var_args["embed_dim"]), num_heads=int(var_args["num_heads"]),
        mlp_ratio=float(var_args.get("mlp_ratio", 4.0)), num_classes=int(var_args["num_classes"]),
        vocab_size=int(vocab_size), z_channels=int(z_channels), patch_nums=tuple(var_args["patch_nums"]),
        drop_rate=float(var_args.get("drop_rate", 0.0)), attn_drop_rate=float(var_args.get("attn_drop_rate", 0.0)),
        drop_path_rate=float(var_args.get("drop_path_rate", 0.0)), norm_eps=float(var_args.get("norm_eps", 1e-6)),
        shared_aln=bool(var_args.get("shared_aln", False)), cond_drop_rate=float(var_args.get("cond_drop_rate", 0.1)),
        attn_l2_norm=bool(var_args.get("attn_l2_norm", True)))
