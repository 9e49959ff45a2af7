"""The `classifier` task and the demo feature extractor (the FID / IS stand-in for Inception), on tiny CPU configs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FixedBatch, loss_recorder, quiet_cpu_trainer
from torch.utils.data import DataLoader

from varianttrain.checkpoints import CheckpointError, load_demo_extractor
from varianttrain.config_io import ConfigError, from_dict, to_dict
from varianttrain.demo.classifier_task import ClassifierModule, ClassifierTaskConfig, build_classifier_module
from varianttrain.models.demo_classifier import DemoFeatureExtractor

NUM_CLASSES = 4
# Augmentation off for the overfitting check (tested separately): a fixed batch must be memorised quickly.
TINY = {"num_classes": NUM_CLASSES, "widths": [16, 32], "blocks_per_stage": 1, "lr": 3e-2, "warmup_steps": 0,
        "dropout": 0.0, "hflip": False, "max_shift": 0, "brightness": 0.0}


def synthetic_shapes(n: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images in [-1, 1] of 4 classes: (disc | box) x (reddish | bluish) on a grey background, random placement."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs, labels = [], []
    for i in range(n):
        c = i % NUM_CLASSES
        bg = torch.rand(1, 1, 1, generator=g).expand(3, 1, 1) * 0.6 - 0.3
        jitter = torch.rand(3, 1, 1, generator=g) * 0.3
        fg = (torch.tensor([0.9, -0.6, -0.6]) if c // 2 == 0 else torch.tensor([-0.6, -0.3, 0.9]))[:, None, None]
        cy, cx = (torch.rand(2, generator=g) * size * 0.4 + size * 0.3).tolist()
        r = float(torch.rand((), generator=g)) * size * 0.1 + size * 0.12
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        mask = disc if c % 2 == 0 else ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        imgs.append(torch.where(mask, (fg + jitter).clamp(-1, 1), bg).float())
        labels.append(c)
    return torch.stack(imgs), torch.tensor(labels, dtype=torch.int64)


def to_uint8(img_B3HW: torch.Tensor) -> torch.Tensor:
    return ((img_B3HW + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def _trainer(steps: int, callbacks=()):
    return quiet_cpu_trainer(steps, callbacks)


@pytest.fixture(scope="module")
def trained():
    """A tiny classifier trained 30 steps on one fixed batch of 16 images, with its loss curve."""
    torch.set_num_threads(1)  # robust on shared, oversubscribed cores
    module = build_classifier_module(from_dict(ClassifierTaskConfig, TINY))
    img_B3HW, label_B = synthetic_shapes(16)
    recorder = loss_recorder()
    trainer = _trainer(30, [recorder])
    trainer.fit(module, DataLoader(FixedBatch(img_B3HW, label_B, 30), batch_size=None),
                DataLoader(FixedBatch(img_B3HW, label_B, 1), batch_size=None))
    return module, recorder.losses, trainer, img_B3HW, label_B


def test_config_defaults_and_validation():
    cfg = ClassifierTaskConfig()
    assert from_dict(ClassifierTaskConfig, to_dict(cfg)) == cfg
    n_params = sum(p.numel() for p in ClassifierModule(cfg).net.parameters())
    assert 200_000 <= n_params <= 1_000_000
    with pytest.raises(ConfigError, match="num_classes"):
        from_dict(ClassifierTaskConfig, {"num_classes": 1})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(ClassifierTaskConfig, {"width": 32})


def test_overfits_fixed_batch(trained):
    module, losses, trainer, img_B3HW, label_B = trained
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3, losses
    assert float(trainer.callback_metrics["val/acc"]) >= 0.75
    assert int(module.train_resolution) == 64


def test_augment_keeps_shape_and_range():
    augment = {"hflip": True, "rot90": True, "max_shift": 3, "brightness": 0.2}
    module = ClassifierModule(from_dict(ClassifierTaskConfig, {**TINY, **augment}))
    img_B3HW = synthetic_shapes(6)[0]
    out = module.augment(img_B3HW)
    assert out.shape == img_B3HW.shape and float(out.abs().max()) <= 1.0 and not torch.equal(out, img_B3HW)
    assert torch.equal(out, module.augment(img_B3HW))  # same seed and step -> same draws


def test_extractor_protocol_and_determinism(trained):
    module = trained[0]
    extractor = module.feature_extractor()
    images = to_uint8(synthetic_shapes(5, seed=3)[0])
    feat_BF, logits_BK = extractor(images)
    assert feat_BF.shape == (5, 32) and logits_BK.shape == (5, NUM_CLASSES)
    assert feat_BF.dtype == logits_BK.dtype == torch.float32
    assert not feat_BF.requires_grad and not extractor.training
    again = extractor(images)
    assert torch.equal(again[0], feat_BF) and torch.equal(again[1], logits_BK)
    # Per-image outputs do not depend on the rest of the batch (eval-mode BatchNorm).
    part = extractor(images[1:3])
    torch.testing.assert_close(part[0], feat_BF[1:3], rtol=1e-5, atol=1e-5)
    extractor.train()
    assert not extractor.training
    # The module keeps training normally: the extractor works on a copy.
    assert all(p.requires_grad for p in module.net.parameters())
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())
    with pytest.raises(ValueError, match="uint8"):
        extractor(images[:, :1])
    # Other sizes are resized to the training resolution (64).
    small = torch.nn.functional.interpolate(images.float(), size=(32, 32), mode="area").round().to(torch.uint8)
    assert extractor(small)[0].shape == (5, 32)


def test_save_load_round_trip(trained, tmp_path):
    module, _, _, img_B3HW, label_B = trained
    paths = module.export(tmp_path / "out")
    assert [p.name for p in paths] == ["classifier.pt"] and paths[0].is_file()
    loaded = load_demo_extractor(paths[0])
    assert isinstance(loaded, DemoFeatureExtractor) and loaded.resolution == 64
    images = to_uint8(img_B3HW)
    ref = module.feature_extractor()(images)
    out = loaded(images)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
    # The metrics code's FeatureExtractor protocol: callable on uint8 batches returning 2-D float tensors.
    from varianttrain.evaluation.metrics import MetricsAccumulator

    acc = MetricsAccumulator(loaded, keep_logits=True)
    acc.update(images)
    assert acc.num_samples == len(images)


def test_lightning_checkpoint_loads_as_extractor(trained, tmp_path):
    module, _, trainer, img_B3HW, _ = trained
    ckpt = tmp_path / "cls.ckpt"
    trainer.save_checkpoint(ckpt)
    images = to_uint8(img_B3HW)
    from_ckpt = load_demo_extractor(ckpt)
    ref = module.feature_extractor()(images)
    assert torch.equal(from_ckpt(images)[1], ref[1])
    restored = ClassifierModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert restored.task_cfg == module.task_cfg and int(restored.train_resolution) == 64


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="classifier"):
        load_demo_extractor(tmp_path / "missing.pt")
    torch.save({"encoder.conv_in.weight": torch.zeros(1)}, tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="not a demo classifier"):
        load_demo_extractor(tmp_path / "vae.pth")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="could not read"):
        load_demo_extractor(tmp_path / "garbage.pt")
    good = ClassifierModule(from_dict(ClassifierTaskConfig, TINY)).save_classifier(tmp_path / "c.pt")
    blob = torch.load(good, weights_only=True)
    blob["arch"]["widths"] = [16, 64]
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_demo_extractor(tmp_path / "bad.pt")
