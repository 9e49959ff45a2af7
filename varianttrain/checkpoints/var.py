"""Reading model weights from every file users bring, with errors that say what the file is.

Accepted for a VAR:
* a released file (`var_d16.pth` ... `var_d30.pth`): a bare state dict;
* the official trainer's checkpoint (`ar-ckpt-*.pth`): weights under `trainer` -> `var_wo_ddp`;
* this project's Lightning checkpoints (`*.ckpt`): weights under `state_dict` with prefix `var.` (EMA under `ema.`);
* this project's exports: a bare `.pth` in the official layout or a `.safetensors` file.
Accepted for the VQVAE: the released `vae_ch160v4096z32.pth` (bare) or the official trainer's `vae_local`.

A file that does not fit the model is never loaded partially: the error names what the file contains, what the
config asks for, and the missing / unexpected keys.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

DOCS_HINT = "see checkpoints/README.md for the expected files and where to get them"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_forward_module.")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model it is loaded into."""


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


def read_file(path: str | Path) -> Any:
    """Load a .pth/.ckpt (weights only, on CPU) or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} does not exist ({DOCS_HINT})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(f"could not read {path} as a PyTorch or safetensors checkpoint: {err}") from err


def _strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def _sub_state(state: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _looks_like_var(state: Mapping[str, Any]) -> bool:
    return "pos_1LC" in state and "class_emb.weight" in state


def _looks_like_vqvae(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("encoder.") for k in state) and "quantize.embedding.weight" in state


def _describe_unknown(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        return f"a mapping with keys {keys}{' ...' if len(obj) > 8 else ''}"
    return f"an object of type {type(obj).__name__}"


def extract_var_state_dict(obj: Any, source: str = "checkpoint", prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """Find the VAR weights inside any supported checkpoint layout."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict or checkpoint mapping, found {_describe_unknown(obj)}")
    if "trainer" in obj and isinstance(obj["trainer"], Mapping) and "var_wo_ddp" in obj["trainer"]:
        return _strip_wrappers(obj["trainer"]["var_wo_ddp"])  # official trainer checkpoint
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # Lightning checkpoint of this project
        state = _strip_wrappers(obj["state_dict"])
        if prefer_ema:
            ema = _sub_state(state, "ema.module.")
            if not ema:
                raise CheckpointError(f"{source}: EMA weights requested but this training checkpoint has none "
                                      "(train with ema.enabled=true, or export without --ema)")
            return ema
        var_state = _sub_state(state, "var.")
        if var_state:
            return var_state
        state = obj["state_dict"]
    state = _strip_wrappers(obj if "state_dict" not in obj else obj["state_dict"])
    if _looks_like_var(state):
        if prefer_ema:
            raise CheckpointError(f"{source}: EMA weights requested but this is a plain VAR state dict")
        return state
    if _looks_like_vqvae(state):
        raise CheckpointError(f"{source} is a VQVAE checkpoint (it has encoder.* and quantize.* weights), "
                              "not a VAR; pass it as the VQVAE file instead")
    raise CheckpointError(f"{source} is not a VAR checkpoint: found {_describe_unknown(obj)} ({DOCS_HINT})")


def extract_vqvae_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the VQVAE weights inside a released file, an official trainer checkpoint or a Lightning checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, found {_describe_unknown(obj)}")
    if "trainer" in obj and isinstance(obj["trainer"], Mapping) and "vae_local" in obj["trainer"]:
        return _strip_wrappers(obj["trainer"]["vae_local"])
    state = _strip_wrappers(obj.get("state_dict", obj)) if isinstance(obj.get("state_dict"), Mapping) else obj
    state = _strip_wrappers(state)
    for prefix in ("vqvae.", "vae."):
        sub = _sub_state(state, prefix)
        if _looks_like_vqvae(sub):
            return sub
    if _looks_like_vqvae(state):
        return state
    if _looks_like_var(state) or "trainer" in obj:
        raise CheckpointError(f"{source} is a VAR checkpoint, not a VQVAE; pass it as the VAR file instead")
    raise CheckpointError(f"{source} is not a VQVAE checkpoint: found {_describe_unknown(obj)} ({DOCS_HINT})")


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


def _mismatch_report(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    lines = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong_shape)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
            lines.append(f"  {title}: {shown}")
    return "\n".join(lines)


def load_var_weights(model: nn.Module, source: str | Path | Mapping[str, Any], prefer_ema: bool = False) -> None:
    """Load VAR weights strictly into `model`, or raise a `CheckpointError` that explains the mismatch."""
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    obj = read_file(source) if isinstance(source, (str, Path)) else source
    state = extract_var_state_dict(obj, name, prefer_ema=prefer_ema)
    info = inspect_var_state_dict(state)
    cfg = model.config
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
    if problems:
        raise CheckpointError(f"{name} is {info.describe()}; the config asks for {cfg.describe()} "
                              f"({'; '.join(problems)}). Use the matching config (model.depth={info.depth}) or "
                              f"the matching file.\n{_mismatch_report(model, state)}")
    report = _mismatch_report(model, state)
    if report:
        raise CheckpointError(f"{name} does not match the model's keys (nothing was loaded):\n{report}")
    model.load_state_dict(state, strict=True)


def load_vqvae_weights(model: nn.Module, source: str | Path | Mapping[str, Any]) -> None:
    """Load VQVAE weights strictly (a foreign-length usage buffer is tolerated by the model itself)."""
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    obj = read_file(source) if isinstance(source, (str, Path)) else source
    state = extract_vqvae_state_dict(obj, name)
    expected = model.state_dict()
    shape_ok = all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items()
                   if k in state and not k.endswith("ema_vocab_hit_SV"))
    if set(state) != set(expected) or not shape_ok:
        raise CheckpointError(f"{name} does not fit the VQVAE config (nothing was loaded):\n"
                              f"{_mismatch_report(model, state)}")
    model.load_state_dict(state, strict=True)
