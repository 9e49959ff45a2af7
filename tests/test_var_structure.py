"""The released VAR architectures built on the meta device have exactly the released keys, shapes and dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import manifest

from varianttrain.models.var import VAR, VARConfig


@pytest.mark.parametrize("depth, keys_file", [(16, "var_d16_keys.json"), (30, "var_d30_keys.json")])
def test_released_layout(depth, keys_file):
    spec = manifest(keys_file)
    with torch.device("meta"):
        var = VAR(VARConfig.for_depth(depth))
    state = var.state_dict()
    assert list(state) == list(spec["keys"]), "state-dict keys or their order differ from the release"
    for name, tensor in state.items():
        entry = spec["keys"][name]
        assert list(tensor.shape) == entry["shape"], name
        assert str(tensor.dtype).removeprefix("torch.") == entry["dtype"], name
    assert len(state) == spec["num_entries"]
    assert sum(p.numel() for p in var.parameters()) == spec["num_params"]
    buffers = {name for name, entry in spec["keys"].items() if entry["kind"] == "buffer"}
    assert sum(state[name].numel() for name in buffers) == spec["num_buffer_elems"]


def test_d30_family_numbers():
    """[VAR §4], official `build_vae_var`: d30 has width 1920, 30 heads, drop-path 0.125, 2,010,020,356 parameters."""
    cfg = VARConfig.for_depth(30)
    assert (cfg.embed_dim, cfg.num_heads, cfg.num_tokens) == (1920, 30, 680)
    assert cfg.drop_path_rate == pytest.approx(0.125)
    with torch.device("meta"):
        var = VAR(cfg)
    assert sum(p.numel() for p in var.parameters()) == 2_010_020_356
    # drop path grows linearly over the blocks, block 0 has none (Identity)
    assert isinstance(var.blocks[0].drop_path, torch.nn.Identity)
    assert var.blocks[-1].drop_path.drop_prob == pytest.approx(0.125)


def test_attention_mask_buffer_is_block_causal():
    var = VAR(VARConfig.for_depth(2, patch_nums=(1, 2, 3), num_classes=4, vocab_size=16, z_channels=8))
    bias = var.attn_bias_for_masking[0, 0]
    scale = torch.tensor([0] + [1] * 4 + [2] * 9)
    expected = torch.where(scale[None, :] <= scale[:, None], 0.0, float("-inf"))
    assert torch.equal(bias, expected)
