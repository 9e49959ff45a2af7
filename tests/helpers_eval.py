"""Files the evaluation tests feed to eval.py: tiny VARs as released state dicts, training checkpoints and exports."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "eval_tiny.yaml"
PATCH_NUMS = (1, 2, 3, 4)


def eval_main():
    """eval.py's `main` (`varianttrain.cli.eval`; the root eval.py is a shim)."""
    from varianttrain.cli.eval import main

    return main


def tiny_var(seed: int = 0, depth: int = 4, num_classes: int = 10):
    """A tiny VAR (width 64, vocab 64, z 32) with PyTorch's default init, so skipped blocks change the images."""
    from varianttrain.models.var import VAR, VARConfig

    torch.manual_seed(seed)
    return VAR(VARConfig(depth=depth, embed_dim=64, num_heads=4, num_classes=num_classes, vocab_size=64,
                         z_channels=32, patch_nums=PATCH_NUMS)).eval()


def save_vqvae(path: Path, seed: int = 0) -> Path:
    from varianttrain.models.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(seed)
    torch.save(VQVAE(VQVAEConfig(vocab_size=64, z_channels=32, ch=32, patch_nums=PATCH_NUMS)).state_dict(), path)
    return path


def save_training_checkpoint(path: Path, var, ema_var=None, bridge: int = 1, depth_choices=(3, 2),
                             subset_rule: str = "nested", subsets: dict | None = None, task: str = "supernet") -> Path:
    """What train.py writes: weights under `var.` (EMA under `ema.module.`) and ``checkpoint["varianttrain"]`` with
    the run config and the layer subsets of every trained depth."""
    state = {f"var.{k}": v for k, v in var.state_dict().items()}
    if ema_var is not None:
        state.update({f"ema.module.{k}": v for k, v in ema_var.state_dict().items()})
    config = {"task": task, "model": {"depth": var.depth, "patch_nums": list(PATCH_NUMS)},
              "supernet": {"bridge_scales": bridge, "depth_choices": list(depth_choices), "subset_rule": subset_rule}}
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.6", "global_step": 10,
                "varianttrain": {"config": config, "subsets": dict(subsets or {})}}, path)
    return path


def save_export(path: Path, var, bridge: int = 1, depth_choices=(2,), subsets: dict | None = None,
                vqvae: Path | None = None, task: str = "supernet") -> Path:
    """A `varianttrain.export` file pair: the bare state dict and its metadata JSON."""
    from varianttrain.checkpoints import EXPORT_FORMAT

    torch.save(var.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({
        "format": EXPORT_FORMAT, "version": 1, "var_config": dataclasses.asdict(var.config), "depth": var.depth,
        "depth_choices": list(depth_choices), "bridge_scales": bridge, "subset_rule": "nested", "task": task,
        "layer_subsets": {str(d): list(b) for d, b in (subsets or {}).items()},
        "vqvae_checkpoint": str(vqvae) if vqvae else None, "ema": False}))
    return path
