"""Export round trip: training checkpoint -> official-layout .pth / .safetensors + metadata -> identical logits."""

from __future__ import annotations

import pytest
import torch
from conftest import manifest
from helpers_training import SMOKE_CONFIG, run_dirs, tiny_overrides

from varianttrain.checkpoints import CheckpointError, load_export
from varianttrain.export import export_checkpoint, main
from varianttrain.models.depth_plan import DepthPlan
from varianttrain.models.var import VAR
from varianttrain.training.runner import run


@pytest.fixture(scope="module")
def trained_ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_run")
    assert run(str(SMOKE_CONFIG), tiny_overrides(root, **{"trainer.max_steps": 4, "optim.lr": 1e-2})) == 0
    return run_dirs(root)[0] / "checkpoints" / "last.ckpt"


def _official_order(depth: int) -> list[str]:
    """The official key order for `depth` blocks, from the released d16 key list (docs/REFERENCES.md B13)."""
    keys = list(manifest("var_d16_keys.json")["keys"])
    head = [k for k in keys[: keys.index("blocks.0.attn.scale_mul_1H11")]]
    block = [k[len("blocks.0."):] for k in keys if k.startswith("blocks.0.")]
    tail = [k for k in keys if not k.startswith(("blocks.",)) and k not in head]
    return head + [f"blocks.{b}.{k}" for b in range(depth) for k in block] + tail


@pytest.mark.parametrize("ema", [False, True])
def test_export_round_trip_identical_logits(trained_ckpt, tmp_path, ema):
    paths = export_checkpoint(trained_ckpt, tmp_path / "out", ema=ema)
    stem = "var_d4_ema" if ema else "var_d4"
    assert sorted(p.name for p in paths) == sorted(f"{stem}.{s}" for s in ("pth", "safetensors", "json"))
    train_state = torch.load(trained_ckpt, weights_only=True)["state_dict"]
    prefix = "ema.module." if ema else "var."
    source = {k[len(prefix):]: v for k, v in train_state.items() if k.startswith(prefix)}

    for fmt in ("pth", "safetensors"):
        var_cfg, state, meta = load_export(tmp_path / "out" / f"{stem}.{fmt}")
        official = _official_order(4)
        # Official names (buffers included); .pth keeps the official order, safetensors stores keys sorted.
        assert (list(state) if fmt == "pth" else sorted(state)) == (official if fmt == "pth" else sorted(official))
        assert state["lvl_1L"].dtype == torch.int64
        fresh = VAR(var_cfg).eval()
        fresh.load_state_dict(state, strict=True)  # what the official demo does
        ref = VAR(var_cfg).eval()
        ref.load_state_dict(source, strict=True)
        torch.manual_seed(0)
        label_B = torch.tensor([1, 3])
        x = torch.randn(2, var_cfg.num_tokens - 1, var_cfg.z_channels)
        for d in [None, *meta["depth_choices"]]:
            plan = (DepthPlan.full(4, var_cfg.patch_nums) if d is None else
                    DepthPlan.subnet(4, var_cfg.patch_nums, meta["bridge_scales"], meta["layer_subsets"][str(d)]))
            with torch.no_grad():
                assert torch.equal(fresh(label_B, x, plan), ref(label_B, x, plan))
        assert meta["ema"] is ema and meta["bridge_scales"] == 2 and meta["depth_choices"] == [2, 1]
        assert meta["layer_subsets"]["1"] and meta["sampling_protocol"]["top_k"] > 0


def test_export_refuses_to_overwrite_and_reports_bad_input(trained_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(trained_ckpt), "--out", str(out), "--format", "pth"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main([str(trained_ckpt), "--out", str(out), "--format", "pth"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main([str(trained_ckpt), "--out", str(out), "--format", "pth", "--overwrite"]) == 0
    assert main([str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
    plain = tmp_path / "plain.pth"
    torch.save({"a": torch.zeros(1)}, plain)
    with pytest.raises(CheckpointError):
        export_checkpoint(plain, tmp_path / "o3")
