"""Demo dataset: determinism, class separability, on-disk layout, reuse and refusal, readable by the DataModule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import varianttrain.demo.dataset as demo
from varianttrain.data.datamodule import ImageNetDataModule
from varianttrain.demo.dataset import (
    NUM_CLASSES,
    class_folder_names,
    demo_data_config,
    generate_demo_dataset,
    render_image,
)

SMALL = dict(resolution=32, per_class=4, per_class_val=2, seed=0, train_shards=4, val_shards=2)


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, generate_demo_dataset(out, **SMALL)


def test_render_is_a_pure_function():
    a = render_image(0, 3, 7, 64)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, render_image(0, 3, 7, 64))
    assert not np.array_equal(a, render_image(0, 3, 8, 64))  # different index
    assert not np.array_equal(a, render_image(1, 3, 7, 64))  # different seed
    assert render_image(0, 3, 7, 128).shape == (128, 128, 3)
    with pytest.raises(ValueError):
        render_image(0, NUM_CLASSES, 0)


def _saturated_mean_colour(img: np.ndarray) -> np.ndarray:
    x = img.reshape(-1, 3).astype(np.float32) / 255
    sat = (x.max(1) - x.min(1)) / np.maximum(x.max(1), 1e-6)
    return x[sat > 0.5].mean(0)


def test_classes_are_separable_but_varied():
    """Nearest-centroid on the mean colour of saturated pixels separates classes; images within a class vary."""
    feats = np.array([[_saturated_mean_colour(render_image(0, c, i, 32)) for i in range(16)]
                      for c in range(NUM_CLASSES)])  # (class, image, rgb)
    centroids = feats[:, :8].mean(1)
    dist = ((feats[:, 8:, None, :] - centroids[None, None]) ** 2).sum(-1)
    accuracy = (dist.argmin(-1) == np.arange(NUM_CLASSES)[:, None]).mean()
    assert accuracy >= 0.9
    # not trivial: the same class at different indices differs in position/background (corner pixels vary)
    corners = np.array([render_image(0, 0, i, 32)[0, 0] for i in range(8)], dtype=np.float32)
    assert corners.std(0).mean() > 10
    assert len(set(class_folder_names())) == NUM_CLASSES and class_folder_names() == sorted(class_folder_names())


def test_layout_and_determinism(small_demo, tmp_path):
    out, manifest = small_demo
    assert manifest["counts"] == {"train": 40, "val": 20}
    assert len(list((out / "shards").glob("train-*.tar"))) == 4
    assert len(list((out / "shards").glob("val-*.tar"))) == 2
    assert len(list((out / "folder" / "train").rglob("*.png"))) == 40
    assert sorted(p.name for p in (out / "folder" / "val").iterdir()) == class_folder_names()
    again = generate_demo_dataset(tmp_path / "copy", **SMALL)
    assert again["content_sha256"] == manifest["content_sha256"]
    assert again["files_sha256"] == manifest["files_sha256"]  # byte-identical PNGs and shards
    other = generate_demo_dataset(tmp_path / "other", **{**SMALL, "seed": 1})
    assert other["content_sha256"] != manifest["content_sha256"]


def test_reused_when_manifest_matches(small_demo, monkeypatch):
    out, manifest = small_demo
    stamp = (out / "manifest.json").stat().st_mtime_ns

    def no_render(*args, **kwargs):
        raise AssertionError("dataset was regenerated instead of reused")

    monkeypatch.setattr(demo, "render_image", no_render)
    assert generate_demo_dataset(out, **SMALL) == manifest
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_never_silently_replaced(tmp_path):
    out = tmp_path / "demo"
    generate_demo_dataset(out, **SMALL)
    with pytest.raises(FileExistsError, match="--overwrite"):
        generate_demo_dataset(out, **{**SMALL, "per_class": 5})  # different parameters
    png = next((out / "folder" / "train").rglob("*.png"))
    png.write_bytes(b"tampered")
    with pytest.raises(FileExistsError):
        generate_demo_dataset(out, **SMALL)  # same parameters, modified files
    manifest = generate_demo_dataset(out, **{**SMALL, "per_class": 5}, overwrite=True)
    assert manifest["counts"]["train"] == 50
    assert len(list((out / "folder" / "train").rglob("*.png"))) == 50


def test_cli_and_unrelated_directory(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--resolution", "32", "--per-class", "2", "--per-class-val", "1",
            "--train-shards", "2", "--val-shards", "1"]
    assert demo.main(args) == 0
    assert json.loads(capsys.readouterr().out)["shard_patterns"]["train"] == "shards/train-{000000..000001}.tar"
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        demo.main(["--out", str(unrelated), "--per-class", "1"])
    assert (unrelated / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("fmt", ["webdataset", "imagefolder"])
def test_demo_readable_by_datamodule(small_demo, fmt):
    out, _ = small_demo
    cfg = demo_data_config(out, fmt=fmt, batch_size=4, num_workers=0)
    assert cfg.num_classes == NUM_CLASSES and cfg.resolution == 32
    dm = ImageNetDataModule(cfg, rank=0, world_size=1)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 40 // 4
    img, label = batches[0]
    assert img.shape == (4, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    labels = torch.cat([lab for _, lab in batches])
    assert sorted(labels.tolist()) == sorted([c for c in range(NUM_CLASSES) for _ in range(4)])
    assert len(list(dm.val_dataloader())) == 20 // 4
