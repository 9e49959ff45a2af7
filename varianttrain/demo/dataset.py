"""Built-in demo dataset: 10 procedurally drawn, class-conditional shape classes (no download, seconds on a CPU).

    python -m varianttrain.demo.dataset --out data/demo --resolution 64 --per-class 500

Each class is one shape kind with its own colour palette and texture (red circles, orange striped squares,
...); every image draws position, scale, rotation, colour jitter, a two-colour background gradient and pixel
noise from `numpy.random.default_rng([seed, class, index])`, so image i of class c is a pure function of
(seed, c, i, resolution). Backgrounds are low-saturation and shapes saturated, which keeps the classes easy for
a small CNN (the demo generator is judged by such a classifier) while position, scale, rotation and background
still vary.

Layout under --out:

    shards/train-000000.tar ...   webdataset shards (<key>.png + <key>.cls), classes mixed (seeded shuffle)
    shards/val-000000.tar ...
    shards/classes.json
    folder/{train,val}/<NN_name>/<key>.png   ImageFolder tree (folder names sort into class-index order)
    manifest.json                 parameters, content hash (pixels + labels) and files hash

An existing output is reused when its manifest has the same parameters and its files still hash to the
manifest's value; anything else in the directory makes generation refuse unless `overwrite=True` / --overwrite.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import io
import json
import logging
import math
import shutil
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from varianttrain.data.config import DataConfig
from varianttrain.data.shards import write_tar_shards
from varianttrain.demo import DEMO_DATA

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump whenever rendering changes, so stale outputs are not reused
MANIFEST = "manifest.json"


# ------------------------------------------------------------------------------------------------
# Signed distance functions in a shape's local frame (shape radius ~1; negative inside)
# ------------------------------------------------------------------------------------------------


def _box(px: np.ndarray, py: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx, qy = np.abs(px) - bx, np.abs(py) - by
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _circle(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return np.hypot(px, py) - 1.0


def _square(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return _box(px, py, 0.82, 0.82)


def _triangle(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    # Equilateral triangle centred on its centroid (I. Quilez's exact 2D SDF), half-side r.
    r, k = 1.15, math.sqrt(3.0)
    px, py = np.abs(px) - r, py + r / k
    fold = px + k * py > 0
    px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _star(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    # Five-pointed star in polar form: radius falls linearly from the tips (1.1) to the notches (0.45).
    angle = np.arctan2(py, px) * (5 / (2 * np.pi))
    f = np.abs(angle - np.round(angle)) * 2  # 0 at a tip, 1 at a notch
    return (np.hypot(px, py) - (1.1 - 0.65 * f)) * 0.6  # 0.6 ~ Lipschitz correction of the polar distance


def _ring(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return np.abs(np.hypot(px, py) - 0.75) - 0.25


def _cross(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return np.minimum(_box(px, py, 1.0, 0.3), _box(px, py, 0.3, 1.0))


def _diamond(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    # Elongated rhombus (half-diagonals a, b): random rotation must not turn it into the square class.
    a, b = 1.1, 0.55
    return (np.abs(px) * b + np.abs(py) * a - a * b) / math.hypot(a, b)


def _crescent(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return np.maximum(np.hypot(px, py) - 1.0, -(np.hypot(px - 0.5, py) - 0.8))


def _stripes(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.clip(np.sin(px * 2.6 * np.pi) * 4, -1, 1)


def _checker(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return ((np.floor(px / 0.45) + np.floor(py / 0.45)) % 2).astype(np.float32)


# (folder name, SDF, hue in degrees, texture or None, texture colour "dark" | "light")
# Hues are ~33 degrees apart so colour alone nearly separates the classes; shape and texture make it certain.
DEMO_CLASSES: tuple[tuple[str, Callable, float, Callable | None, str], ...] = (
    ("circle", _circle, 0.0, None, ""),
    ("square", _square, 220.0, None, ""),
    ("triangle", _triangle, 110.0, None, ""),
    ("star", _star, 55.0, None, ""),
    ("ring", _ring, 300.0, None, ""),
    ("cross", _cross, 185.0, None, ""),
    ("striped_square", _square, 28.0, _stripes, "dark"),
    ("checker_circle", _circle, 262.0, _checker, "light"),
    ("diamond", _diamond, 150.0, None, ""),
    ("crescent", _crescent, 335.0, None, ""),
)
NUM_CLASSES = len(DEMO_CLASSES)


def class_folder_names() -> list[str]:
    """ImageFolder folder names '00_circle', ...; their sorted order equals the class index."""
    return [f"{i:02d}_{spec[0]}" for i, spec in enumerate(DEMO_CLASSES)]


# ------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x right, y down), shape (res, res) each."""
    c = ((np.arange(resolution, dtype=np.float32) + 0.5) / resolution) * 2 - 1
    return np.meshgrid(c, c)


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360, s, v), dtype=np.float32)


def render_image(seed: int, class_idx: int, index: int, resolution: int = 64) -> np.ndarray:
    """Image `index` of class `class_idx`: uint8 array (resolution, resolution, 3); a pure function of its args."""
    if not 0 <= class_idx < NUM_CLASSES:
        raise ValueError(f"class_idx must lie in [0, {NUM_CLASSES}), got {class_idx}")
    _, sdf, hue, texture, tex_tone = DEMO_CLASSES[class_idx]
    rng = np.random.default_rng([seed, class_idx, index])
    x, y = _grid(resolution)

    # Background: gradient between two low-saturation colours along a random direction, plus pixel noise.
    c0 = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.9))
    c1 = _hsv(rng.uniform(0, 360), rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.9))
    phi = rng.uniform(0, 2 * np.pi)
    t = np.clip((x * np.cos(phi) + y * np.sin(phi) + 1) / 2, 0, 1)[..., None]
    img = c0 * (1 - t) + c1 * t

    # Shape: random centre, size (fraction of the half-image), rotation; local frame = inverse transform.
    size = rng.uniform(0.3, 0.5)
    cx, cy = rng.uniform(-0.85 + size, 0.85 - size, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    cos, sin = np.cos(theta), np.sin(theta)
    dx, dy = x - cx, y - cy
    px, py = (cos * dx + sin * dy) / size, (-sin * dx + cos * dy) / size
    # Distance in pixels = local distance * size * res / 2; a 1-pixel soft edge anti-aliases the outline.
    alpha = np.clip(0.5 - sdf(px, py) * (size * resolution / 2), 0, 1)[..., None]

    fg = _hsv(hue + rng.uniform(-10, 10), rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    shade = (0.88 + 0.12 * np.clip(py, -1, 1))[..., None]  # soft top-to-bottom shading in the shape's frame
    fill = fg * shade
    if texture is not None:
        second = fg * 0.25 if tex_tone == "dark" else np.array([0.95, 0.95, 0.95], dtype=np.float32)
        m = texture(px, py)[..., None]
        fill = fill * (1 - m) + second * m
    img = img * (1 - alpha) + fill * alpha
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), size=img.shape)
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def encode_png(img_HW3: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 RGB array (deterministic for a given zlib)."""
    buf = io.BytesIO()
    Image.fromarray(img_HW3).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# Dataset generation, manifest, reuse
# ------------------------------------------------------------------------------------------------


def _files_sha256(out: Path) -> str:
    """sha256 over (relative path, bytes) of every file under shards/ and folder/, in sorted order."""
    h = hashlib.sha256()
    for sub in ("shards", "folder"):
        for path in sorted(p for p in (out / sub).rglob("*") if p.is_file()):
            h.update(str(path.relative_to(out)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _reusable(out: Path, params: dict) -> dict | None:
    """The existing manifest when `out` holds exactly the dataset `params` describes, else None."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("params") != params:
        return None
    if _files_sha256(out) != manifest.get("files_sha256"):
        return None
    return manifest


def generate_demo_dataset(
    out_dir: str | Path = DEMO_DATA,
    resolution: int = 64,
    per_class: int = 500,
    per_class_val: int = 50,
    seed: int = 0,
    train_shards: int = 8,
    val_shards: int = 4,
    overwrite: bool = False,
) -> dict:
    """Write (or reuse) the demo dataset under `out_dir`; returns its manifest (see module docstring).

    Train images of class c have indices 0..per_class-1, val images per_class..per_class+per_class_val-1, so the
    splits never share an image. Raises FileExistsError when `out_dir` holds other content and not `overwrite`.
    """
    if resolution < 8 or per_class < 1 or per_class_val < 0 or train_shards < 1 or val_shards < 1:
        raise ValueError("resolution >= 8, per_class >= 1, per_class_val >= 0 and shard counts >= 1 are required")
    out = Path(out_dir)
    params = {"generator_version": GENERATOR_VERSION, "seed": seed, "resolution": resolution,
              "per_class": per_class, "per_class_val": per_class_val,
              "train_shards": train_shards, "val_shards": val_shards}
    manifest = _reusable(out, params)
    if manifest is not None:
        log.info("reusing demo dataset in %s (manifest matches)", out)
        return manifest
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} is not empty and does not hold a demo dataset with parameters {params} (manifest missing, "
                "different or files modified); pass --overwrite (overwrite=True) or choose another --out"
            )
        for sub in ("shards", "folder"):
            shutil.rmtree(out / sub, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)

    names = class_folder_names()
    content = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    splits = {"train": range(0, per_class), "val": range(per_class, per_class + per_class_val)}
    counts, patterns = {}, {}
    for split, indices in splits.items():
        records = []  # (key, png bytes, field, label)
        for c in range(NUM_CLASSES):
            folder = out / "folder" / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices:
                img = render_image(seed, c, i, resolution)
                key = f"{c:02d}_{i:06d}"
                content.update(key.encode() + img.tobytes())
                png = encode_png(img)
                (folder / f"{key}.png").write_bytes(png)
                records.append((key, png, "png", c))
        counts[split] = len(records)
        if not records:
            continue
        order = np.random.default_rng([seed, len(split)]).permutation(len(records))  # mix classes across shards
        n_shards = train_shards if split == "train" else val_shards
        maxcount = math.ceil(len(records) / n_shards)
        (out / "shards").mkdir(parents=True, exist_ok=True)
        paths = write_tar_shards((records[j] for j in order), str(out / "shards" / f"{split}-%06d.tar"), maxcount)
        patterns[split] = f"shards/{split}-{{{0:06d}..{len(paths) - 1:06d}}}.tar"  # relative to out_dir
    (out / "shards" / "classes.json").write_text(json.dumps({"classes": names}, indent=1) + "\n")
    manifest = {"generator": __name__, "params": params, "classes": names, "counts": counts,
                "shard_patterns": patterns, "content_sha256": content.hexdigest(), "files_sha256": _files_sha256(out)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("wrote demo dataset (%s) to %s", counts, out)
    return manifest


def demo_data_config(out_dir: str | Path = DEMO_DATA, fmt: str = "webdataset", **overrides) -> DataConfig:
    """A DataConfig reading the demo dataset generated in `out_dir` (its shards, or with fmt='imagefolder' its tree).

    `overrides` replace any DataConfig field (batch_size, num_workers, ...).
    """
    out = Path(out_dir)
    if not (out / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{out / MANIFEST} not found; run: python -m varianttrain.demo.dataset --out {out}"
        )
    manifest = json.loads((out / MANIFEST).read_text())
    has_val = manifest["counts"].get("val", 0) > 0
    if fmt == "webdataset":
        patterns = manifest["shard_patterns"]
        paths = {"train_path": str(out / patterns["train"]),
                 "val_path": str(out / patterns["val"]) if has_val else None}
    else:
        paths = {"train_path": str(out / "folder" / "train"),
                 "val_path": str(out / "folder" / "val") if has_val else None}
    kw = dict(format=fmt, resolution=manifest["params"]["resolution"], num_classes=NUM_CLASSES,
              epoch_length=manifest["counts"]["train"], val_epoch_length=max(manifest["counts"].get("val", 0), 1),
              shuffle_buffer=1000, **paths)
    kw.update(overrides)
    return DataConfig(**kw)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEMO_DATA), help="output directory (default: the repository's data/demo)")
    parser.add_argument("--resolution", type=int, default=64, help="image side in pixels (64; 128 also supported)")
    parser.add_argument("--per-class", type=int, default=500, help="train images per class")
    parser.add_argument("--per-class-val", type=int, default=50, help="validation images per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-shards", type=int, default=8, help="number of train shards (8: fits 1/2/4/8 readers)")
    parser.add_argument("--val-shards", type=int, default=4, help="number of val shards")
    parser.add_argument("--overwrite", action="store_true", help="replace a different dataset in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        manifest = generate_demo_dataset(args.out, args.resolution, args.per_class, args.per_class_val, args.seed,
                                         args.train_shards, args.val_shards, args.overwrite)
    except (FileExistsError, ValueError) as exn:
        parser.error(str(exn))
    print(json.dumps({k: manifest[k] for k in ("counts", "shard_patterns", "content_sha256")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
