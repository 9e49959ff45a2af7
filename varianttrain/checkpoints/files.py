"""What every weight reader shares: reading a file, the error type, unwrapping prefixes, describing a mismatch."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

DOCS_HINT = "see checkpoints/README.md for the expected files and where to get them"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_forward_module.")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model it is loaded into."""


def read_file(path: str | Path, mmap: bool = False) -> Any:
    """Load a .pth/.ckpt (weights only, on CPU) or .safetensors file.

    `mmap`: map the tensors of a zip-format file instead of reading them (reading the architecture off an 8 GB
    checkpoint then costs milliseconds and almost no memory; tensors are read from disk when first used).
    Weights-only loading is explicit, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off.
    """
    path = Path(path)
    if not path.is_file():
        hint = _fetch_hint(path)
        raise CheckpointError(f"checkpoint file {path} does not exist ("
                              + (f"fetch it with `{hint}`)" if hint else f"{DOCS_HINT})"))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError as err:
            if mmap and "mmap" in str(err):  # a legacy (non-zip) file cannot be mapped: read it
                return torch.load(path, map_location="cpu", weights_only=True)
            raise
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):  # not a pickle of anything: damaged or not a checkpoint at all
            raise CheckpointError(f"could not read {path} as a PyTorch or safetensors checkpoint: its bytes are "
                                  "not a saved state dict (damaged, truncated, or another kind of file)") from None
        # torch's own message recommends weights_only=False, i.e. running whatever the file contains: never.
        found = str(err).split("Unsupported global: ")[-1].split("\n")[0][:120]
        raise CheckpointError(f"{path} is not a weights file: it holds Python objects ({found}) that only "
                              "unpickling code could rebuild, and loading such a file can run arbitrary code. "
                              "varianttrain reads tensors only; export the weights as a plain state dict.") from None
    except Exception as err:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise CheckpointError(f"could not read {path} as a PyTorch or safetensors checkpoint: "
                              f"{_first_line(err)}") from err


def read_verified(path: str | Path) -> Any:
    """`read_file(path, mmap=True)` for a file about to be trusted whole (a resume): every record's CRC-32 first
    (streamed, little memory; torch.load itself never checks them, so a damaged tensor would otherwise load as
    silently wrong weights), then the last element of every tensor, so a truncated record fails here instead of in
    the middle of a restore."""
    import zipfile

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"could not read {path}: {_first_line(err)}") from None
    if bad is not None:
        raise CheckpointError(f"{path}: record {bad} fails its CRC check (the file is damaged)")
    obj = read_file(path, mmap=True)
    _touch_tensors(obj)
    return obj


def _touch_tensors(obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        if obj.numel():
            obj.reshape(-1)[-1].item()
    elif isinstance(obj, Mapping):
        for value in obj.values():
            _touch_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _touch_tensors(value)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _fetch_hint(path: Path) -> str:
    from varianttrain.download import fetch_hint

    return fetch_hint(path)


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the prefixes DDP (`module.`), torch.compile (`_orig_mod.`) and Lightning/FSDP add."""
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


def sub_state(state: Mapping[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def looks_like_var(state: Mapping[str, Any]) -> bool:
    return "pos_1LC" in state and "class_emb.weight" in state


def looks_like_vqvae(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("encoder.") for k in state) and "quantize.embedding.weight" in state


def describe_unknown(obj: Any) -> str:
    """A short description of an object that is not what a reader expected."""
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        return f"a mapping with keys {keys}{' ...' if len(obj) > 8 else ''}"
    return f"an object of type {type(obj).__name__}"


def mismatch_report(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Missing keys, unexpected keys and shape mismatches of `state` against `model` (empty when it fits)."""
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
