"""Checkpoint formats users bring, and the errors for files that do not fit."""

from __future__ import annotations

import pytest
import torch
from conftest import manifest
from safetensors.torch import save_file

from varianttrain.checkpoints import (
    CheckpointError,
    inspect_var_state_dict,
    load_var_weights,
    load_vqvae_weights,
)
from varianttrain.models.var import VAR, VARConfig
from varianttrain.models.vqvae import VQVAE, VQVAEConfig


def _tiny(depth: int = 2) -> VAR:
    torch.manual_seed(depth)
    return VAR(VARConfig.for_depth(depth, embed_dim=64, num_heads=2, patch_nums=(1, 2, 3), num_classes=4,
                                   vocab_size=16, z_channels=8))


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("layout", ["bare", "official_trainer", "lightning", "ddp_prefixed", "safetensors"])
def test_var_layouts_load(tmp_path, layout):
    src, dst = _tiny(), _tiny()
    dst.load_state_dict({k: torch.zeros_like(v) for k, v in dst.state_dict().items()})
    state = src.state_dict()
    path = tmp_path / ("w.safetensors" if layout == "safetensors" else "w.pth")
    if layout == "bare":
        torch.save(state, path)
    elif layout == "official_trainer":
        torch.save({"epoch": 3, "iter": 10, "trainer": {"var_wo_ddp": state, "vae_local": {}, "var_opt": {}},
                    "args": {}}, path)
    elif layout == "lightning":
        torch.save({"state_dict": {f"var.{k}": v for k, v in state.items()}, "epoch": 0}, path)
    elif layout == "ddp_prefixed":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    load_var_weights(dst, path)
    assert _same_weights(src, dst)


def test_ema_weights_are_chosen_on_request(tmp_path):
    live, ema = _tiny(), _tiny()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    state = {f"var.{k}": v for k, v in live.state_dict().items()}
    state.update({f"ema.module.{k}": v for k, v in ema.state_dict().items()})
    torch.save({"state_dict": state}, tmp_path / "run.ckpt")
    dst = _tiny()
    load_var_weights(dst, tmp_path / "run.ckpt", prefer_ema=True)
    assert _same_weights(dst, ema)
    torch.save({"state_dict": {f"var.{k}": v for k, v in live.state_dict().items()}}, tmp_path / "no_ema.ckpt")
    with pytest.raises(CheckpointError, match="EMA weights requested"):
        load_var_weights(dst, tmp_path / "no_ema.ckpt", prefer_ema=True)


def test_wrong_depth_is_named_and_nothing_loads(tmp_path):
    torch.save(_tiny(depth=3).state_dict(), tmp_path / "d3.pth")
    dst = _tiny(depth=2)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_var_weights(dst, tmp_path / "d3.pth")
    msg = str(err.value)
    assert "is a depth-3 VAR" in msg and "asks for depth-2 VAR" in msg and "model.depth=3" in msg
    assert "unexpected keys: blocks.2." in msg
    assert all(torch.equal(before[k], v) for k, v in dst.state_dict().items())


def test_released_d30_is_recognised_from_its_shapes():

    spec = manifest("var_d16_keys.json")["keys"]
    fake = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta") for k, v in spec.items()}
    info = inspect_var_state_dict(fake)
    assert (info.depth, info.width, info.num_heads, info.num_classes, info.vocab_size, info.num_tokens) == (
        16, 1024, 16, 1000, 4096, 680)
    assert "depth-16 VAR" in info.describe()


def test_vqvae_file_passed_as_var_and_vice_versa(tmp_path):
    vae = VQVAE(VQVAEConfig(vocab_size=16, z_channels=8, ch=32, patch_nums=(1, 2, 3)))
    torch.save(vae.state_dict(), tmp_path / "vae.pth")
    torch.save(_tiny().state_dict(), tmp_path / "var.pth")
    with pytest.raises(CheckpointError, match="is a VQVAE checkpoint"):
        load_var_weights(_tiny(), tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="is a VAR checkpoint, not a VQVAE"):
        load_vqvae_weights(vae, tmp_path / "var.pth")
    other = VQVAE(VQVAEConfig(vocab_size=16, z_channels=8, ch=32, patch_nums=(1, 2, 3)))
    load_vqvae_weights(other, tmp_path / "vae.pth")
    assert _same_weights(vae, other)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_var_weights(_tiny(), tmp_path / "var_d30.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not read"):
        load_var_weights(_tiny(), tmp_path / "junk.pth")
    torch.save({"optimizer": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="is not a VAR checkpoint"):
        load_var_weights(_tiny(), tmp_path / "other.pth")
