"""Write webdataset tar shards from an ImageFolder tree (one split): `python -m varianttrain.data.shards`.

    python -m varianttrain.data.shards --src /imagenet/train --out data/imagenet/train --maxcount 1000
    -> data/imagenet/train/train-000000.tar ... + classes.json

Each sample: `<key>.jpg` (or `.png`) = the original file bytes, never re-encoded (re-encoding would change the
pixels the pretrained VQVAE saw), `<key>.cls` = class index as ASCII text. Class index = position of the class
folder in sorted order, exactly like torchvision ImageFolder; VAR-d30's class embedding was trained with that
order (the official code builds its dataset with `DatasetFolder`). Files are shuffled once before writing
(seeded), so every shard mixes classes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import webdataset as wds

log = logging.getLogger(__name__)

# Image extensions written, and the webdataset field each becomes (".JPEG" must become "jpg", docs/REFERENCES.md L5).
FIELD_BY_EXTENSION = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png"}
TAR_MTIME = 0.0  # fixed member mtime: the same input gives byte-identical shards


def find_classes(src: str | Path) -> list[str]:
    """Class folder names in sorted order (index = position), as torchvision's ImageFolder does."""
    classes = sorted(entry.name for entry in os.scandir(src) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class folders in {src} (expected {src}/<class>/<image>)")
    return classes


def list_images(src: str | Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(file, class index) for every .jpg/.jpeg/.png under src/<class>/ (recursively), in sorted order."""
    records: list[tuple[Path, int]] = []
    ignored = 0
    for label, name in enumerate(classes):
        for root, _dirs, files in sorted(os.walk(Path(src) / name, followlinks=True)):
            for fname in sorted(files):
                if Path(fname).suffix.lower() in FIELD_BY_EXTENSION:
                    records.append((Path(root) / fname, label))
                else:
                    ignored += 1
    if ignored:
        log.warning("ignored %d files without a .jpg/.jpeg/.png extension under %s", ignored, src)
    return records


def sample_key(path: Path) -> str:
    """Sample key = file stem, dots replaced (webdataset splits key and field at the first dot, REFERENCES.md L5)."""
    return path.stem.replace(".", "_")


def write_tar_shards(
    records: Iterable[tuple[str, bytes, str, int]],
    pattern: str,
    maxcount: int = 1000,
    maxsize: float = 3e9,
) -> list[str]:
    """Write (key, image bytes, field, label) records to shards `pattern % i`; returns the shard paths.

    A new shard starts after `maxcount` samples or once a shard reaches `maxsize` bytes.
    """
    paths: list[str] = []
    sink = None
    count = size = 0
    try:
        for key, data, field, label in records:
            if sink is None or count >= maxcount or size >= maxsize:
                if sink is not None:
                    sink.close()
                paths.append(pattern % len(paths))
                sink = wds.TarWriter(paths[-1], mtime=TAR_MTIME)
                count = size = 0
            # bytes pass through the default encoder unchanged; the label is written as ASCII text.
            sink.write({"__key__": key, field: data, "cls": str(label).encode("ascii")})
            count += 1
            size += len(data)
    finally:
        if sink is not None:
            sink.close()
    return paths


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless overwrite (then remove only our earlier outputs)."""
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output directory {out} is not empty; pass --overwrite (overwrite=True) to replace")
        for old in [*out.glob("*.tar"), out / "classes.json"]:
            if old.is_file():
                old.unlink()


def write_shards(
    src: str | Path,
    out: str | Path,
    maxcount: int = 1000,
    maxsize: float = 3e9,
    shuffle_seed: int | None = 0,
    prefix: str | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Write the ImageFolder split `src` as shards `out/<prefix>-%06d.tar` plus `out/classes.json`.

    Args:
        src: folder with one sub-folder per class (e.g. ILSVRC2012 train/ with n01440764/...).
        out: output directory; must be empty or missing unless `overwrite`.
        maxcount: samples per shard (the last shard may hold fewer).
        maxsize: bytes of image data per shard before a new one starts.
        shuffle_seed: seed of the one-off file-order shuffle; None keeps the sorted order.
        prefix: shard name prefix; default: the name of `src` (train / val).
        overwrite: replace earlier shards and classes.json in `out`.
    Returns:
        the shard paths written.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a directory")
    if maxcount <= 0 or maxsize <= 0:
        raise ValueError(f"maxcount and maxsize must be positive, got {maxcount} and {maxsize}")
    check_output_dir(out, overwrite)
    classes = find_classes(src)
    images = list_images(src, classes)
    if not images:
        raise FileNotFoundError(f"no .jpg/.jpeg/.png images under {src}/<class>/")
    keys = [sample_key(path) for path, _ in images]
    if len(set(keys)) != len(keys):
        dup = Counter(keys).most_common(1)[0][0]
        raise ValueError(f"duplicate sample key {dup!r} under {src}: keys (file stems) must be unique")
    order = np.arange(len(images))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(images))
    out.mkdir(parents=True, exist_ok=True)
    prefix = prefix or src.name

    def records() -> Iterable[tuple[str, bytes, str, int]]:
        for i in order:
            path, label = images[i]
            yield keys[i], path.read_bytes(), FIELD_BY_EXTENSION[path.suffix.lower()], label

    paths = write_tar_shards(records(), str(out / f"{prefix}-%06d.tar"), maxcount=maxcount, maxsize=maxsize)
    meta = {"classes": classes, "num_samples": len(images), "num_shards": len(paths), "maxcount": maxcount,
            "shuffle_seed": shuffle_seed, "pattern": f"{prefix}-{{{0:06d}..{len(paths) - 1:06d}}}.tar"}
    (out / "classes.json").write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote %d samples of %d classes into %d shards under %s", len(images), len(classes), len(paths), out)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", required=True, help="ImageFolder split: <src>/<class>/<image>")
    parser.add_argument("--out", required=True, help="output directory for <prefix>-%%06d.tar and classes.json")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--maxsize", type=float, default=3e9, help="bytes per shard before starting the next")
    parser.add_argument("--shuffle-seed", type=int, default=0, help="file-order shuffle seed; -1 = keep sorted order")
    parser.add_argument("--prefix", default=None, help="shard name prefix (default: name of --src)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards in a non-empty --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = write_shards(args.src, args.out, args.maxcount, args.maxsize,
                             None if args.shuffle_seed < 0 else args.shuffle_seed, args.prefix, args.overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as exn:
        parser.error(str(exn))
    print(f"wrote {len(paths)} shards to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
