"""The `tokenizer` task: VQVAE training module, dead-code restart, export / load round trip (tiny CPU configs)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import FixedBatch, loss_recorder, quiet_cpu_trainer
from torch.utils.data import DataLoader

from varianttrain.checkpoints import CheckpointError, load_exported_vqvae, load_vqvae_weights
from varianttrain.config_io import ConfigError, from_dict, to_dict
from varianttrain.demo.tokenizer_task import (
    TokenizerModule,
    TokenizerTaskConfig,
    build_tokenizer_module,
    reconstruction_psnr,
)
from varianttrain.models.vqvae import VQVAE

TINY = {"vocab_size": 32, "z_channels": 8, "ch": 32, "patch_nums": [1, 2, 3, 4], "lr": 1e-3, "warmup_steps": 0,
        "restart_every": 10, "grid_images": 4}


def synthetic_shapes(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images in [-1, 1]: a flat coloured background with one coloured disc (even labels) or box (odd)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs, labels = [], []
    for i in range(n):
        bg, fg = torch.rand(3, 1, 1, generator=g) * 0.6 - 0.8, torch.rand(3, 1, 1, generator=g) * 0.8 + 0.1
        cy, cx = (torch.rand(2, generator=g) * size * 0.5 + size * 0.25).tolist()
        r = float(torch.rand((), generator=g)) * size * 0.15 + size * 0.1
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        mask = disc if i % 2 == 0 else ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        imgs.append(torch.where(mask, fg, bg).float())
        labels.append(i % 2)
    return torch.stack(imgs), torch.tensor(labels, dtype=torch.int64)


def _loader(img_B3HW: torch.Tensor, label_B: torch.Tensor, steps: int) -> DataLoader:
    return DataLoader(FixedBatch(img_B3HW, label_B, steps), batch_size=None)


def _trainer(steps: int, callbacks=()):
    return quiet_cpu_trainer(steps, callbacks, limit_val_batches=1)


@pytest.fixture(scope="module")
def trained():
    """A tiny tokenizer trained 30 steps on one fixed batch of 4 images, with its loss curve."""
    torch.set_num_threads(1)  # robust on shared, oversubscribed cores
    module = build_tokenizer_module(from_dict(TokenizerTaskConfig, TINY))
    img_B3HW, label_B = synthetic_shapes(4)
    recorder = loss_recorder()
    trainer = _trainer(30, [recorder])
    trainer.fit(module, _loader(img_B3HW, label_B, 30), _loader(img_B3HW, label_B, 1))
    return module, recorder.losses, img_B3HW


def test_config_defaults_and_validation():
    cfg = TokenizerTaskConfig()
    assert cfg.image_size == 64 and cfg.vqvae_config().patch_nums == (1, 2, 3, 4)
    assert from_dict(TokenizerTaskConfig, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="multiple of 32"):
        from_dict(TokenizerTaskConfig, {"ch": 48})
    with pytest.raises(ConfigError, match="loss weights"):
        from_dict(TokenizerTaskConfig, {"l1_weight": -1.0})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(TokenizerTaskConfig, {"learning_rate": 1e-3})


def test_overfits_fixed_batch(trained):
    module, losses, img_B3HW = trained
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.6 * first, losses
    # Validation ran on the same images and produced an image grid: 2 rows of 4 (64 + 2 padding) px tiles.
    assert module.val_grid is not None and module.val_grid.shape == (3, 2 + 2 * 66, 2 + 4 * 66)
    assert 0.0 <= float(module.val_grid.min()) and float(module.val_grid.max()) <= 1.0


def test_restarts_revive_codes(trained):
    module, _, _ = trained
    # Starting from the +-1/V codebook almost every query picks the same few codes; restarts every 10 steps must
    # have re-initialised dead codes from queries, so by now several distinct codes are in use.
    assert module.restarted_codes > 0
    with torch.no_grad():
        _, _, _, f_BChw = module.eval()(synthetic_shapes(4)[0])
        idx_K = module.scale_queries(f_BChw)[1]
    assert len(torch.cat(idx_K).unique()) >= 8


def test_restart_replaces_only_dead_codes():
    module = TokenizerModule(from_dict(TokenizerTaskConfig, TINY)).eval()
    with torch.no_grad():
        f_BChw = module.vqvae.encode_latent(synthetic_shapes(2)[0])
        queries_K, idx_K = module.scale_queries(f_BChw)
    used = torch.cat(idx_K).unique()
    module.code_hits_V[used] = 5.0
    module._reservoir_NC = torch.cat(queries_K)
    before = module.vqvae.quantize.embedding.weight.detach().clone()
    assert module.restart_dead_codes() == 32 - len(used)
    after = module.vqvae.quantize.embedding.weight.detach()
    assert torch.equal(after[used], before[used])
    dead = torch.ones(32, dtype=torch.bool)
    dead[used] = False
    # Every new code is one of the queries (no jitter needed: 2 images give 60 queries for < 32 dead codes).
    is_query_DN = (after[dead][:, None, :] == module._reservoir_NC[None]).all(dim=-1)
    assert bool(is_query_DN.any(dim=1).all())
    assert float(module.code_hits_V.sum()) == 0.0


def test_scale_queries_match_tokeniser():
    module = TokenizerModule(from_dict(TokenizerTaskConfig, TINY)).eval()
    img_B3HW = synthetic_shapes(2)[0]
    with torch.no_grad():
        idx_K = module.scale_queries(module.vqvae.encode_latent(img_B3HW))[1]
    expected = module.vqvae.img_to_idxBl(img_B3HW)
    for ours, ref in zip(idx_K, expected, strict=True):
        assert torch.equal(ours, ref.reshape(-1))


def test_export_round_trip(trained, tmp_path):
    module, _, img_B3HW = trained
    paths = module.export(tmp_path / "out")
    assert [p.name for p in paths] == ["vqvae.pth", "vqvae.json"] and all(p.is_file() for p in paths)
    meta = json.loads(paths[1].read_text())
    assert meta["image_size"] == 64 and meta["vqvae_config"]["patch_nums"] == [1, 2, 3, 4]
    # Bare state dict in the released layout: exactly the VQVAE's keys, readable by the project's loader.
    state = torch.load(paths[0], weights_only=True)
    assert list(state) == list(module.vqvae.state_dict())
    fresh = VQVAE(module.task_cfg.vqvae_config())
    load_vqvae_weights(fresh, paths[0])
    loaded = load_exported_vqvae(paths[0])
    module.vqvae.eval()
    with torch.no_grad():
        ref = module.vqvae.img_to_reconstructed_img(img_B3HW, last_one=True)
        assert torch.equal(loaded.img_to_reconstructed_img(img_B3HW, last_one=True), ref)
        for a, b in zip(loaded.img_to_idxBl(img_B3HW), module.vqvae.img_to_idxBl(img_B3HW), strict=True):
            assert torch.equal(a, b)
    assert float(reconstruction_psnr(ref, img_B3HW).mean()) > 10.0


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqvae.pth"):
        load_exported_vqvae(tmp_path / "vqvae.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "vqvae.pth")
    with pytest.raises(FileNotFoundError, match="JSON"):
        load_exported_vqvae(tmp_path / "vqvae.pth")
    (tmp_path / "vqvae.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a VQVAE export"):
        load_exported_vqvae(tmp_path / "vqvae.pth")


def test_lightning_checkpoint_round_trip(trained, tmp_path):
    module, _, img_B3HW = trained
    trainer = _trainer(1)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "tok.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = TokenizerModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert restored.task_cfg == module.task_cfg
    # The checkpoint holds the VQVAE under `vqvae.*`, which the project's VQVAE loader understands.
    fresh = VQVAE(module.task_cfg.vqvae_config())
    load_vqvae_weights(fresh, ckpt)
    with torch.no_grad():
        assert torch.equal(fresh.eval().img_to_reconstructed_img(img_B3HW, last_one=True),
                           module.vqvae.eval().img_to_reconstructed_img(img_B3HW, last_one=True))


def test_wrong_resolution_message():
    module = TokenizerModule(from_dict(TokenizerTaskConfig, TINY))
    with pytest.raises(ValueError, match="data.resolution=64"):
        module(torch.zeros(1, 3, 32, 32))
