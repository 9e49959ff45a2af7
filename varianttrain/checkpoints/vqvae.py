"""VQVAE weights from every file users bring, the VQVAE a file describes, and the tokenizer export format.

Accepted: the released `vae_ch160v4096z32.pth` (a bare state dict), the official trainer's checkpoint (`vae_local`),
a Lightning checkpoint holding the VQVAE under `vqvae.` or `vae.` (the demo `tokenizer` task's), and the tokenizer
export: `<name>.pth` (a bare state dict in the released layout) plus `<name>.json`

    {"format": VQVAE_EXPORT_FORMAT, "format_version": 1, "vqvae_config": {VQVAEConfig fields}, "image_size": int,
     ... the writer's extras (global_step, task_config, storage_dtype, source_checkpoint)}

which `save_vqvae_export` writes and `load_exported_vqvae` reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
from varianttrain.config_io import from_dict, to_dict
from varianttrain.models.build import empty_model
from varianttrain.models.vqvae import VQVAE, VQVAEConfig

VQVAE_EXPORT_FORMAT = "varianttrain-vqvae"  # "format" entry of the JSON written next to an exported VQVAE
VQVAE_EXPORT_VERSION = 1


def extract_vqvae_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the VQVAE weights inside a released file, an official trainer checkpoint or a Lightning checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state dict, found {describe_unknown(obj)}")
    if "trainer" in obj and isinstance(obj["trainer"], Mapping) and "vae_local" in obj["trainer"]:
        return strip_wrappers(obj["trainer"]["vae_local"])
    state = strip_wrappers(obj.get("state_dict", obj)) if isinstance(obj.get("state_dict"), Mapping) else obj
    state = strip_wrappers(state)
    for prefix in ("vqvae.", "vae."):
        sub = sub_state(state, prefix)
        if looks_like_vqvae(sub):
            return sub
    if looks_like_vqvae(state):
        return state
    if looks_like_var(state) or "trainer" in obj:
        raise CheckpointError(f"{source} is a VAR checkpoint, not a VQVAE; pass it as the VAR file instead")
    raise CheckpointError(f"{source} is not a VQVAE checkpoint: found {describe_unknown(obj)} ({DOCS_HINT})")


def check_vqvae_file(path: str | Path, config: VQVAEConfig) -> None:
    """Raise `CheckpointError` unless `path` holds VQVAE weights that fit `config`; reads shapes only (mmap)."""
    state = extract_vqvae_state_dict(read_file(path, mmap=True), str(path))
    with torch.device("meta"):
        expected = VQVAE(config).state_dict()
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}" for k, v in expected.items()
             if k in state and not k.endswith("ema_vocab_hit_SV") and tuple(state[k].shape) != tuple(v.shape)]
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if wrong or missing or unexpected:
        details = "; ".join(x for x in (f"shapes {wrong[:3]}" if wrong else "", f"missing {missing[:3]}" if missing
                                        else "", f"unexpected {unexpected[:3]}" if unexpected else "") if x)
        raise CheckpointError(f"{path} does not fit model.vqvae (vocab {config.vocab_size}, z_channels "
                              f"{config.z_channels}, ch {config.ch}, ch_mult {list(config.ch_mult)}): {details}")


def load_vqvae_weights(model: nn.Module, source: str | Path | Mapping[str, Any]) -> None:
    """Load VQVAE weights strictly (a foreign-length usage buffer is tolerated by the model itself)."""
    name = str(source) if isinstance(source, (str, Path)) else "state dict"
    obj = read_file(source, mmap=True) if isinstance(source, (str, Path)) else source
    state = extract_vqvae_state_dict(obj, name)
    expected = model.state_dict()
    shape_ok = all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items()
                   if k in state and not k.endswith("ema_vocab_hit_SV"))
    if set(state) != set(expected) or not shape_ok:
        raise CheckpointError(f"{name} does not fit the VQVAE config (nothing was loaded):\n"
                              f"{mismatch_report(model, state)}")
    model.load_state_dict(state, strict=True)


def vqvae_config_from_state(state: Mapping[str, torch.Tensor], patch_nums: Sequence[int],
                            ch: int | None = None) -> VQVAEConfig:
    """The config of a VQVAE state dict: vocabulary and code width from the codebook, `ch` from the first convolution
    (unless given), `ch_mult` from the encoder levels' widths; the pyramid `patch_nums` is the caller's."""
    codebook = state["quantize.embedding.weight"]
    ch = ch or int(state["encoder.conv_in.weight"].shape[0])
    # The blocks of encoder level i output ch * ch_mult[i] channels, so the multipliers follow from those widths.
    levels = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    ch_mult = tuple(int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) // ch for i in levels)
    return VQVAEConfig(vocab_size=int(codebook.shape[0]), z_channels=int(codebook.shape[1]), ch=ch,
                       patch_nums=tuple(patch_nums), ch_mult=ch_mult)


def load_vqvae(path: Path, patch_nums: Sequence[int], ch: int | None = None,
               device: torch.device | str = "cpu") -> VQVAE:
    """The frozen VQVAE of `path`; width, vocabulary, channels and `ch_mult` are read off the weights (`ch` only
    when given), the pyramid `patch_nums` is the caller's (a state dict does not record it). Built without random
    init (`models.build.empty_model`) from the memory-mapped file: every value is loaded strictly right after."""
    state = extract_vqvae_state_dict(read_file(path, mmap=True), str(path))
    config = vqvae_config_from_state(state, patch_nums, ch)
    vqvae = empty_model(lambda: VQVAE(config), device)
    load_vqvae_weights(vqvae, state)
    return vqvae.freeze()


def save_vqvae_export(path: str | Path, state: Mapping[str, torch.Tensor], config: VQVAEConfig,
                      **extra: Any) -> tuple[Path, Path]:
    """Write a tokenizer export: `path` (the bare state dict) and `path` with suffix .json (the config, the image
    size, then `extra`). Returns (state-dict path, JSON path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), path)
    meta = {"format": VQVAE_EXPORT_FORMAT, "format_version": VQVAE_EXPORT_VERSION, "vqvae_config": to_dict(config),
            "image_size": config.image_size, **extra}
    json_path = path.with_suffix(".json")
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    return path, json_path


def load_exported_vqvae(path: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """Rebuild a VQVAE written by `save_vqvae_export` (weights + the JSON next to them), frozen.

    Raises:
        FileNotFoundError: the state dict or its JSON is missing.
        CheckpointError: the files are unreadable or do not fit together.
    """
    path = Path(path)
    json_path = path.with_suffix(".json")
    for p, what in ((path, "VQVAE state dict"), (json_path, "VQVAE config JSON")):
        if not p.is_file():
            raise FileNotFoundError(f"{what} {p} does not exist: train the `tokenizer` task and export it "
                                    "(TokenizerModule.export writes vqvae.pth and vqvae.json; docs/DEMO_MODELS.md)")
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{json_path} is not a readable JSON file: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != VQVAE_EXPORT_FORMAT or "vqvae_config" not in meta:
        raise CheckpointError(f"{json_path} is not a VQVAE export description (expected format "
                              f"{VQVAE_EXPORT_FORMAT!r})")
    vq_cfg = from_dict(VQVAEConfig, meta["vqvae_config"], where=str(json_path))
    vqvae = VQVAE(vq_cfg)
    load_vqvae_weights(vqvae, path)
    return vqvae.to(device).freeze()
