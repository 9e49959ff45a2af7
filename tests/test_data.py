"""Data layer: shard writing/reading, rank x worker splitting, corrupt samples, ImageFolder, indices, transforms."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset.tariterators import tarfile_samples

from varianttrain.data.checks import data_problems
from varianttrain.data.config import DataConfig
from varianttrain.data.datamodule import ImageNetDataModule, write_index_dataset
from varianttrain.data.shards import main as shards_main
from varianttrain.data.shards import write_shards, write_tar_shards
from varianttrain.data.transforms import build_transform
from varianttrain.data.webdataset_pipeline import (
    EpochLoader,
    ShardStream,
    check_enough_shards,
    expand_shards,
    split_by_rank,
    split_by_worker,
)

NUM_CLASSES = 4
NUM_IMAGES = 32  # 8 per class
RES = 16


def _jpeg(sample_id: int, label: int, size: tuple[int, int] = (20, 18)) -> bytes:
    """A solid-colour JPEG whose red channel encodes the sample id (survives JPEG, resize and crop)."""
    img = Image.new("RGB", size, (4 * sample_id + 2, 60 * label, 128))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _ids(img_B3HW: torch.Tensor) -> list[int]:
    """Sample ids back from the red channel of [-1, 1] batches."""
    red = (img_B3HW[:, 0].mean(dim=(1, 2)) + 1) / 2 * 255
    return [round((float(r) - 2) / 4) for r in red]


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory) -> Path:
    """ImageFolder tree: 4 classes x 8 tiny JPEGs named like ImageNet files (synset_index.JPEG)."""
    root = tmp_path_factory.mktemp("imagefolder") / "train"
    for i in range(NUM_IMAGES):
        label = i % NUM_CLASSES
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"n{label:08d}_{i:03d}.JPEG").write_bytes(_jpeg(i, label))
    return root


@pytest.fixture(scope="module")
def shard_dir(image_tree, tmp_path_factory) -> Path:
    """8 shards x 4 samples written by write_shards."""
    out = tmp_path_factory.mktemp("shards")
    paths = write_shards(image_tree, out, maxcount=4, shuffle_seed=0)
    assert len(paths) == 8
    return out


def _wds_cfg(shard_dir: Path, **kw) -> DataConfig:
    base = dict(format="webdataset", train_path=str(shard_dir / "train-{000000..000007}.tar"),
                val_path=str(shard_dir / "train-{000000..000007}.tar"), resolution=RES, batch_size=2,
                num_workers=0, shuffle_buffer=4, epoch_length=NUM_IMAGES, val_epoch_length=NUM_IMAGES,
                num_classes=NUM_CLASSES, persistent_workers=False)
    base.update(kw)
    return DataConfig(**base)


# ------------------------------------------------------------------------------------------------
# Shard writing
# ------------------------------------------------------------------------------------------------


def test_shards_round_trip(image_tree, shard_dir):
    classes = json.loads((shard_dir / "classes.json").read_text())
    assert classes["classes"] == [f"n{c:08d}" for c in range(NUM_CLASSES)]
    assert classes["num_samples"] == NUM_IMAGES and classes["num_shards"] == 8
    shards = expand_shards(str(shard_dir / classes["pattern"]))
    samples = list(tarfile_samples({"url": s} for s in shards))
    assert len(samples) == NUM_IMAGES
    originals = {p.stem: p for p in image_tree.rglob("*.JPEG")}
    for sample in samples:
        path = originals[sample["__key__"]]
        assert set(sample) >= {"jpg", "cls"}
        assert sample["jpg"] == path.read_bytes()  # original bytes, not re-encoded
        assert int(sample["cls"]) == classes["classes"].index(path.parent.name)
    # the seeded shuffle mixes classes: the first shard does not hold a single class
    first = [int(s["cls"]) for s in samples[:4]]
    assert len(set(first)) > 1


def test_shards_refuse_overwrite(image_tree, shard_dir, tmp_path, capsys):
    with pytest.raises(FileExistsError, match="not empty"):
        write_shards(image_tree, shard_dir, maxcount=4)
    with pytest.raises(SystemExit):
        shards_main(["--src", str(image_tree), "--out", str(shard_dir)])
    assert "--overwrite" in capsys.readouterr().err
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale-000099.tar").write_bytes(b"")
    assert shards_main(["--src", str(image_tree), "--out", str(out), "--maxcount", "16", "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    # same input, same seed -> byte-identical shards (fixed tar mtime)
    assert (out / "train-000000.tar").read_bytes() == write_and_read_first_shard(image_tree, tmp_path / "third")


def write_and_read_first_shard(src: Path, out: Path) -> bytes:
    write_shards(src, out, maxcount=16)
    return (out / "train-000000.tar").read_bytes()


# ------------------------------------------------------------------------------------------------
# Splitting and equal steps
# ------------------------------------------------------------------------------------------------


def test_split_functions_partition():
    shards = [f"s{i}" for i in range(12)]
    seen = []
    for rank in range(2):
        mine = split_by_rank(shards, rank, 2)
        for worker in range(3):
            seen += split_by_worker(mine, worker, 3)
    assert sorted(seen) == sorted(shards)
    assert split_by_rank(shards) == shards  # no process group: rank 0 of 1
    with pytest.raises(ValueError):
        split_by_rank(shards, 2, 2)


def test_two_ranks_two_workers_each_sample_once(shard_dir):
    """world 2 x 2 workers: every sample exactly once per epoch across ranks, equal batch counts, per epoch."""
    per_epoch = []
    for rank in range(2):
        dm = ImageNetDataModule(_wds_cfg(shard_dir, num_workers=2), rank=rank, world_size=2)
        loader = dm.train_dataloader()
        assert len(loader) == NUM_IMAGES // (2 * 2)
        epochs = []
        for _ in range(2):
            batches = list(loader)
            assert len(batches) == len(loader) == 8
            ids = [i for img, label in batches for i in _ids(img)]
            labels = [int(v) for img, label in batches for v in label]
            assert labels == [i % NUM_CLASSES for i in ids]
            assert batches[0][0].shape == (2, 3, RES, RES)
            epochs.append(ids)
        per_epoch.append(epochs)
    for epoch in range(2):
        all_ids = per_epoch[0][epoch] + per_epoch[1][epoch]
        assert sorted(all_ids) == list(range(NUM_IMAGES))
    assert per_epoch[0][0] != per_epoch[0][1]  # reshuffled between epochs


def test_shuffle_is_deterministic(shard_dir):
    def ids(seed: int) -> list[int]:
        loader = ImageNetDataModule(_wds_cfg(shard_dir, seed=seed), rank=0, world_size=1).train_dataloader()
        return [i for img, _ in loader for i in _ids(img)]

    first = ids(0)
    assert sorted(first) == list(range(NUM_IMAGES))
    assert ids(0) == first
    assert ids(1) != first


def test_uneven_shards_still_equal_steps(shard_dir):
    """3 shards for 2 ranks: rank 1 has fewer samples but cycles, so both ranks yield exactly the cap."""
    cfg = _wds_cfg(shard_dir, train_path=str(shard_dir / "train-{000000..000002}.tar"), epoch_length=12)
    counts = [len(list(ImageNetDataModule(cfg, rank=r, world_size=2).train_dataloader())) for r in range(2)]
    assert counts == [3, 3]


def test_too_few_shards_error(shard_dir):
    dm = ImageNetDataModule(_wds_cfg(shard_dir, num_workers=4), rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"8 shard\(s\).*world_size=4 x num_workers=4 = 16.*--maxcount"):
        dm.train_dataloader()
    check_enough_shards(8, 2, 4)  # exactly enough: no error


# ------------------------------------------------------------------------------------------------
# Corrupt samples
# ------------------------------------------------------------------------------------------------


def _corrupt_shards(out: Path) -> tuple[str, int, int]:
    """2 shards x 6 samples, 2 bad ones in the middle of each shard: returns (pattern, good, bad)."""
    good_jpeg = _jpeg(1, 1)
    records = []
    for i in range(12):
        key, data, label = f"s{i:03d}", _jpeg(i, i % NUM_CLASSES), i % NUM_CLASSES
        records.append((key, data, "jpg", label))
    records[2] = ("s002", good_jpeg[: len(good_jpeg) // 2], "jpg", 2)  # truncated JPEG
    records[3] = ("s003", _jpeg(3, 3), "jpg", "three")  # non-integer class
    records[8] = ("s008", _jpeg(8, 0), "jpg", 17)  # label outside [0, num_classes)
    records[9] = ("s009", b"no image here", "txt", 1)  # no image field at all
    out.mkdir(parents=True, exist_ok=True)
    write_tar_shards(records, str(out / "bad-%06d.tar"), maxcount=6)
    return str(out / "bad-{000000..000001}.tar"), 8, 4


def test_corrupt_samples_skipped_and_counted(tmp_path, caplog):
    pattern, good, bad = _corrupt_shards(tmp_path)
    cfg = _wds_cfg(tmp_path, train_path=pattern, val_path=pattern, batch_size=1, val_epoch_length=good)
    dm = ImageNetDataModule(cfg, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="varianttrain.data.webdataset_pipeline"):
        batches = list(dm.val_dataloader())  # val: fixed order, one exact pass
    assert len(batches) == good
    assert dm.skip_counts() == {"train": 0, "val": bad}
    messages = [r.getMessage() for r in caplog.records if "skipped corrupt sample" in r.getMessage()]
    assert len(messages) == bad
    assert any("s003" in m for m in messages) and any("label 17" in m for m in messages)
    assert any("no image field" in m for m in messages)


def test_corrupt_count_reaches_main_process_with_workers(tmp_path):
    pattern, good, bad = _corrupt_shards(tmp_path)
    cfg = _wds_cfg(tmp_path, train_path=pattern, val_path=pattern, batch_size=1, val_epoch_length=good,
                   num_workers=2, persistent_workers=True)
    dm = ImageNetDataModule(cfg, rank=0, world_size=1)
    loader = dm.val_dataloader()
    ids = [i for img, _ in loader for i in _ids(img)]
    assert sorted(ids) == [0, 1, 4, 5, 6, 7, 10, 11]  # one pass: each worker reads one shard with 4 good
    assert loader.skipped == bad


def test_stream_of_only_corrupt_samples_fails_loudly(tmp_path):
    write_tar_shards([("k0", b"\xff\xd8garbage", "jpg", 0)], str(tmp_path / "junk-%06d.tar"))
    stream = ShardStream([str(tmp_path / "junk-000000.tar")], build_transform(RES, train=False), 1,
                         rank=0, world_size=1, train=False)
    with pytest.raises(RuntimeError, match="no readable sample"):
        list(EpochLoader(stream, 1))


def test_truncated_tar_is_survived(tmp_path, shard_dir):
    data = (shard_dir / "train-000000.tar").read_bytes()
    (tmp_path / "cut-000000.tar").write_bytes(data[: len(data) // 2])
    (tmp_path / "cut-000001.tar").write_bytes((shard_dir / "train-000001.tar").read_bytes())
    with tarfile.open(shard_dir / "train-000001.tar") as tar:
        intact = len(tar.getnames()) // 2
    stream = ShardStream(expand_shards(str(tmp_path / "cut-{000000..000001}.tar")), build_transform(RES, train=False),
                         1, rank=0, world_size=1, train=False, num_classes=NUM_CLASSES)
    loader = EpochLoader(stream, intact + 1)
    assert len(list(loader)) == intact + 1  # the half shard's readable samples plus the whole second shard
    assert loader.skipped >= 1


# ------------------------------------------------------------------------------------------------
# ImageFolder, indices, paths
# ------------------------------------------------------------------------------------------------


def test_imagefolder_format(image_tree):
    cfg = DataConfig(format="imagefolder", train_path=str(image_tree), val_path=str(image_tree), resolution=RES,
                     batch_size=4, num_workers=0, num_classes=NUM_CLASSES)
    dm = ImageNetDataModule(cfg)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == NUM_IMAGES // 4
    img, label = batches[0]
    assert img.shape == (4, 3, RES, RES) and img.dtype == torch.float32
    assert img.min() >= -1 and img.max() <= 1
    ids = [i for img, _ in batches for i in _ids(img)]
    assert sorted(ids) == list(range(NUM_IMAGES))
    labels = [int(v) for _, lab in batches for v in lab]
    assert labels == [i % NUM_CLASSES for i in ids]  # ImageFolder sorted-folder order == shard class index
    assert len(list(dm.val_dataloader())) == NUM_IMAGES // 4


def test_imagefolder_corrupt_image_is_replaced_named_and_counted(image_tree, tmp_path, caplog):
    """A damaged JPEG does not end the run: the next readable image takes its place, the file is named, counted."""
    import shutil

    root = tmp_path / "train"
    shutil.copytree(image_tree, root)
    bad = sorted(root.rglob("*.JPEG"))[5]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated: header only
    cfg = DataConfig(format="imagefolder", train_path=str(root), val_path=None, resolution=RES, batch_size=4,
                     num_workers=0, num_classes=NUM_CLASSES, max_skip_fraction=0.5)
    dm = ImageNetDataModule(cfg)
    dm.setup("fit")
    with caplog.at_level("WARNING"):
        batches = list(dm.train_dataloader())
    assert sum(len(img) for img, _ in batches) == NUM_IMAGES  # batches keep their size
    ids = [i for img, _ in batches for i in _ids(img)]
    assert len(set(ids)) == NUM_IMAGES - 1  # the bad image is gone; its neighbour appears twice
    assert dm.skip_counts()["train"] == 1
    assert str(bad) in caplog.text


def test_labels_beyond_the_model_are_found_before_training(image_tree, tmp_path):
    cfg = DataConfig(format="imagefolder", train_path=str(image_tree), val_path=None, num_classes=NUM_CLASSES - 1)
    (problem,) = data_problems(cfg)
    assert f"has {NUM_CLASSES} class folders but data.num_classes={NUM_CLASSES - 1}" in problem
    write_index_dataset(tmp_path / "tok", np.zeros((3, 7), dtype=np.int64), np.array([0, 1, 7]))
    cfg = DataConfig(format="indices", train_path=str(tmp_path / "tok"), val_path=None, num_classes=7)
    (problem,) = data_problems(cfg)
    assert "has label 7 but data.num_classes=7" in problem
    assert data_problems(DataConfig(format="indices", train_path=str(tmp_path / "tok"), val_path=None,
                                    num_classes=8)) == []


def test_indices_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    idx_NL = rng.integers(0, 4096, size=(10, 7))
    labels_N = rng.integers(0, 1000, size=10)
    write_index_dataset(tmp_path / "train", idx_NL, labels_N)
    assert np.load(tmp_path / "train" / "idx.npy").dtype == np.int16
    with pytest.raises(FileExistsError):
        write_index_dataset(tmp_path / "train", idx_NL, labels_N)
    cfg = DataConfig(format="indices", train_path=str(tmp_path / "train"), val_path=None, batch_size=5,
                     num_workers=0)
    dm = ImageNetDataModule(cfg)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    got_idx, got_lab = zip(*dm.train_dataloader(), strict=True)
    idx_BL, label_B = torch.cat(got_idx), torch.cat(got_lab)
    assert idx_BL.dtype == torch.int64 and idx_BL.shape == (10, 7)
    order = np.argsort(label_B.numpy() * 10_000 + idx_BL[:, 0].numpy())
    expected = np.argsort(labels_N * 10_000 + idx_NL[:, 0])
    np.testing.assert_array_equal(idx_BL.numpy()[order], idx_NL[expected])


def test_map_loader_order_ranks_and_mid_epoch_resume(tmp_path):
    """The map-style loader: rank r of w reads every w-th entry of the permutation seeded by (seed, epoch), the same
    however the run got there, and a loader restored from a checkpoint's state continues that epoch exactly."""
    n, seed = 20, 3
    write_index_dataset(tmp_path / "train", np.arange(n)[:, None], np.zeros(n, dtype=np.int64))
    cfg = DataConfig(format="indices", train_path=str(tmp_path / "train"), val_path=None, batch_size=2,
                     num_workers=0, seed=seed)

    def ids(loader) -> list[int]:
        return [int(i) for idx_BL, _ in loader for i in idx_BL[:, 0]]

    def epoch_order(epoch: int) -> list[int]:
        return np.random.default_rng([seed, epoch]).permutation(n).tolist()

    loaders = [ImageNetDataModule(cfg, rank=r, world_size=2).train_dataloader() for r in range(2)]
    first = [ids(loader) for loader in loaders]
    assert len(first[0]) == len(first[1]) == n // 2 and sorted(first[0] + first[1]) == list(range(n))
    assert first == [epoch_order(0)[0::2], epoch_order(0)[1::2]]
    assert ids(loaders[0]) == first[0]  # re-iterating the same epoch gives the same order
    loaders[0].sampler.set_epoch(1)  # what Lightning does at every epoch start
    assert ids(loaders[0]) == epoch_order(1)[0::2] != first[0]
    assert loaders[0].state_dict() == {"epoch": 0, "consumed_batches": 0}  # no trainer: nothing consumed
    resumed = ImageNetDataModule(cfg, rank=0, world_size=2).train_dataloader()
    resumed.load_state_dict({"epoch": 1, "consumed_batches": 3})  # 3 batches of 2 of epoch 1 were trained on
    assert ids(resumed) == epoch_order(1)[0::2][6:]
    assert ids(resumed) == epoch_order(1)[0::2]  # the skip applies to the resumed epoch only


@pytest.mark.parametrize("fmt", ["webdataset", "imagefolder", "indices"])
def test_missing_paths_name_the_key(tmp_path, fmt):
    missing = tmp_path / "nowhere" / ("train-{000000..000003}.tar" if fmt == "webdataset" else "train")
    cfg = DataConfig(format=fmt, train_path=str(missing), val_path=None, num_workers=0)
    with pytest.raises(FileNotFoundError, match=r"data\.train_path.*nowhere"):
        ImageNetDataModule(cfg).setup("fit")


def test_config_validation():
    with pytest.raises(ValueError, match="data.format"):
        DataConfig(format="lmdb")
    with pytest.raises(ValueError, match="data.resolution.*multiple of 16"):
        DataConfig(resolution=100)
    with pytest.raises(ValueError, match="data.batch_size"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match="data.epoch_length"):
        DataConfig(epoch_length=8, batch_size=16)
    assert DataConfig(batch_size=8).effective_val_batch_size == 8


# ------------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------------


def test_transforms_range_and_size():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8))
    for train, hflip in ((True, False), (True, True), (False, False)):
        x = build_transform(32, train=train, hflip=hflip)(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
    white = build_transform(32, train=False)(Image.new("RGB", (40, 60), (255, 255, 255)))
    black = build_transform(32, train=True)(Image.new("RGB", (60, 40), (0, 0, 0)))
    assert torch.all(white == 1) and torch.all(black == -1)
    steps = [type(t).__name__ for t in build_transform(256, train=True, hflip=True).transforms]
    assert steps == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "ToSignedUnitRange"]
    assert build_transform(256).transforms[0].size == 288  # round(1.125 * 256), official `build_dataset`
    val = build_transform(32, train=False, hflip=True)
    assert torch.equal(val(img), val(img))  # center crop, never flipped


# ------------------------------------------------------------------------------------------------
# Lightning: ranks come from the trainer (ddp_fork, 2 CPU processes)
# ------------------------------------------------------------------------------------------------


class _RecordIds:
    """LightningModule factory kept at module level so the class is importable (ddp_fork needs no pickling)."""

    @staticmethod
    def build(out_dir: Path):
        import lightning as L

        class Recorder(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.zeros(1))
                self.seen: dict[int, list[int]] = {}

            def training_step(self, batch, batch_idx):
                img, label = batch
                self.seen.setdefault(self.current_epoch, []).extend(_ids(img))
                return (self.w * img.mean()).sum()

            def on_train_end(self) -> None:
                path = out_dir / f"rank{self.global_rank}.json"
                path.write_text(json.dumps({str(k): v for k, v in self.seen.items()}))

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.0)

        return Recorder()


@pytest.mark.ddp
def test_lightning_ddp_fork_disjoint_ranks(shard_dir, tmp_path):
    import lightning as L

    cfg = _wds_cfg(shard_dir, num_workers=2, persistent_workers=True, val_path=None)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_fork", max_epochs=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(_RecordIds.build(tmp_path), datamodule=ImageNetDataModule(cfg))
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        assert len(seen[0][epoch]) == len(seen[1][epoch]) == NUM_IMAGES // 2  # equal steps per rank
        assert sorted(seen[0][epoch] + seen[1][epoch]) == list(range(NUM_IMAGES))  # disjoint and complete
    assert seen[0]["0"] != seen[0]["1"]  # the trainer's epoch reseeds the shuffle
