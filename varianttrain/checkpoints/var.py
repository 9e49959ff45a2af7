"""VAR weights from every file users bring, and the VAR a file describes.

Accepted:
* a released file (`var_d16.pth` ... `var_d30.pth`): a bare state dict;
* the official trainer's checkpoint (`ar-ckpt-*.pth`): weights under `trainer` -> `var_wo_ddp`;
* this project's Lightning checkpoints (`*.ckpt`): weights under `state_dict` with prefix `var.` (EMA under `ema.`);
* this project's exports: a bare `.pth` in the official layout or a `.safetensors` file (`export_format`).

A file that does not fit the model is never loaded partially: the error names what the file contains, what the
config asks for, and the missing / unexpected keys.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from varianttrain.checkpoints.export_format import is_export, load_export
from varianttrain.checkpoints.files import (
    DOCS_HINT,
    CheckpointError,
    describe_unknown,
    looks_like_var,
    looks_like_vqvae,
    mismatch_report,
    read_file,
    strip_wrappers,
    sub_state,
)
from varianttrain.models.var import VAR, VARConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VARCheckpointInfo:
    """Architecture facts read off a VAR state dict."""

    depth: int
    width: int
    num_heads: int | None
    num_classes: int
    vocab_size: int
    z_channels: int
    num_tokens: int
    shared_aln: bool

    def describe(self) -> str:
        heads = f", {self.num_heads} heads" if self.num_heads else ""
        return (f"a depth-{self.depth} VAR (width {self.width}{heads}, {self.num_classes} classes, vocab "
                f"{self.vocab_size}, {self.num_tokens} tokens)")


def extract_var_state_dict(obj: Any, source: str = "checkpoint", prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the VAR weights inside any supported checkpoint layout."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict or checkpoint mapping, found {describe_unknown(obj)}")
    if "trainer" in obj and isinstance(obj["trainer"], Mapping) and "var_wo_ddp" in obj["trainer"]:
        return strip_wrappers(obj["trainer"]["var_wo_ddp"])  # official trainer checkpoint
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning checkpoint of this project
        state = strip_wrappers(obj["state_dict"])
        if prefer_ema:
            ema = sub_state(state, "ema.module.")
            if not ema:
                raise CheckpointError(f"{source}: EMA weights requested but this training checkpoint has none "
                                      "(train with ema.enabled=true, or export without --ema)")
            return ema
        var_state = sub_state(state, "var.")
        if var_state:
            return var_state
        state = obj["state_dict"]
    state = strip_wrappers(obj if "state_dict" not in obj else obj["state_dict"])
    if looks_like_var(state):
        if prefer_ema:
            raise CheckpointError(f"{source}: EMA weights requested but this is a plain VAR state dict")
        return state
    if looks_like_vqvae(state):
        raise CheckpointError(f"{source} is a VQVAE checkpoint (it has encoder.* and quantize.* weights), "
                              "not a VAR; pass it as the VQVAE file instead")
    raise CheckpointError(f"{source} is not a VAR checkpoint: found {describe_unknown(obj)} ({DOCS_HINT})")


def inspect_var_state_dict(state: Mapping[str, torch.Tensor]) -> VARCheckpointInfo:
    """Read depth, width, classes, vocabulary and token count off a VAR state dict."""
    block_ids = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    scale_mul = state.get("blocks.0.attn.scale_mul_1H11")
    return VARCheckpointInfo(
        depth=len(block_ids), width=int(state["pos_1LC"].shape[-1]),
        num_heads=int(scale_mul.shape[1]) if scale_mul is not None else None,
        num_classes=int(state["class_emb.weight"].shape[0]) - 1, vocab_size=int(state["head.weight"].shape[0]),
        z_channels=int(state["word_embed.weight"].shape[1]), num_tokens=int(state["pos_1LC"].shape[1]),
        shared_aln="shared_ada_lin.1.weight" in state)


def architecture_problems(info: VARCheckpointInfo, cfg: VARConfig) -> list[str]:
    """What differs between the architecture read off a file and the one a config asks for (empty: it fits)."""
    problems = []
    if info.depth != cfg.depth:
        problems.append(f"depth {info.depth} vs {cfg.depth}")
    if info.width != cfg.embed_dim:
        problems.append(f"width {info.width} vs {cfg.embed_dim}")
    if info.num_classes != cfg.num_classes:
        problems.append(f"{info.num_classes} vs {cfg.num_classes} classes")
    if info.vocab_size != cfg.vocab_size:
        problems.append(f"vocab {info.vocab_size} vs {cfg.vocab_size}")
    if info.num_tokens != cfg.num_tokens:
        problems.append(f"{info.num_tokens} vs {cfg.num_tokens} tokens (different patch_nums)")
    return problems


def check_var_file(path: str | Path, cfg: VARConfig, prefer_ema: bool = False) -> None:
    """Raise `CheckpointError` unless `path` holds VAR weights of architecture `cfg`; reads shapes only (mmap)."""
    state = extract_var_state_dict(read_file(path, mmap=True), str(path), prefer_ema=prefer_ema)
    info = inspect_var_state_dict(state)
    problems = architecture_problems(info, cfg)
    if problems:
        raise CheckpointError(f"{path} is {info.describe()}; the config asks for {cfg.describe()} "
                              f"({'; '.join(problems)}). Use the matching config (model.depth={info.depth}) or "
                              "the matching file.")


def load_var_weights(model: nn.Module, source: str | Path | Mapping[str, Any], prefer_ema: bool = False) -> None:
    """Load VAR weights strictly into `model`, or raise a `CheckpointError` that explains the mismatch.

    A file is memory-mapped and copied into the model's tensors, so a model built without initialisation
    (`varianttrain.models.build.empty_model`) receives its weights without a second full copy in memory.
    """
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    obj = read_file(source, mmap=True) if isinstance(source, (str, Path)) else source
    state = extract_var_state_dict(obj, name, prefer_ema=prefer_ema)
    info = inspect_var_state_dict(state)
    cfg = model.config
    problems = architecture_problems(info, cfg)
    if problems:
        raise CheckpointError(f"{name} is {info.describe()}; the config asks for {cfg.describe()} "
                              f"({'; '.join(problems)}). Use the matching config (model.depth={info.depth}) or "
                              f"the matching file.\n{mismatch_report(model, state)}")
    report = mismatch_report(model, state)
    if report:
        raise CheckpointError(f"{name} does not match the model's keys (nothing was loaded):\n{report}")
    model.load_state_dict(state, strict=True)


def var_config_from_state(state: Mapping[str, torch.Tensor], patch_nums: Sequence[int],
                          source: str = "state dict") -> VARConfig:
    """The inference config of a VAR state dict: depth, width, heads, classes, vocabulary and options as the
    weights say, the pyramid `patch_nums` from the caller (a state dict records only its token count, which must
    agree: CheckpointError otherwise)."""
    info = inspect_var_state_dict(state)
    tokens = sum(p * p for p in patch_nums)
    if tokens != info.num_tokens:
        raise CheckpointError(f"{source} has {info.num_tokens} token positions but model.patch_nums {list(patch_nums)} "
                              f"gives {tokens}; set model.patch_nums to the pyramid the model was trained with")
    return VARConfig(depth=info.depth, embed_dim=info.width, num_heads=info.num_heads or info.depth,
                     num_classes=info.num_classes, vocab_size=info.vocab_size, z_channels=info.z_channels,
                     patch_nums=tuple(patch_nums), shared_aln=info.shared_aln, drop_path_rate=0.0,
                     attn_l2_norm="blocks.0.attn.scale_mul_1H11" in state)


def load_var(path: Path, patch_nums: Sequence[int], device: torch.device | str = "cpu", ema: bool = False) -> VAR:
    """A frozen eval-mode VAR built from what its checkpoint says (`var_config_from_state`)."""
    state = extract_var_state_dict(read_file(path), str(path), prefer_ema=ema)
    var = VAR(var_config_from_state(state, patch_nums, str(path)))
    load_var_weights(var, state)
    return var.to(device).eval().requires_grad_(False)


def load_exported_var(path: str | Path, device: torch.device | str = "cpu") -> tuple[VAR, dict[str, Any]]:
    """The frozen eval-mode VAR of a `varianttrain.export` file (architecture from its metadata) and the metadata."""
    config, state, meta = load_export(path)
    var = VAR(dataclasses.replace(config, drop_path_rate=0.0))
    load_var_weights(var, state)
    return var.to(device).eval().requires_grad_(False), dict(meta)


def load_var_with_metadata(path: Path, patch_nums: Sequence[int], device: torch.device | str = "cpu",
                           ema: bool = False) -> tuple[VAR, dict[str, Any]]:
    """The VAR of `path` and, for a `varianttrain.export` file, its metadata (depth choices, bridge N, layer subsets).

    An export (a `.safetensors` file with varianttrain metadata, or weights with the export's `<stem>.json` beside
    them) is read with `load_exported_var`, whose architecture (patch_nums included) wins over `patch_nums`;
    anything else is a plain checkpoint (`load_var`) with no metadata.
    """
    if is_export(path):
        try:
            var, meta = load_exported_var(path, device)
        except CheckpointError as err:
            if path.suffix != ".safetensors" or "no varianttrain metadata" not in str(err):
                raise
        else:
            if tuple(var.patch_nums) != tuple(patch_nums):
                log.warning("%s was exported with patch_nums %s; using them instead of model.patch_nums %s",
                            path, list(var.patch_nums), list(patch_nums))
            return var, meta
    return load_var(path, patch_nums, device, ema=ema), {}
