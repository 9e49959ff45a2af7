"""Sample images on disk: float→uint8 quantisation, PNG I/O, ADM-style center crop and ``.npz`` sample packing.

Layout conventions: tensors are ``uint8`` RGB, channels first (``img_3HW``, ``img_B3HW``); numpy arrays written
for the ADM evaluator are channels last (``arr_NHW3``), as ``openai/guided-diffusion/evaluations`` expects.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg")
RoundingRule = Literal["truncate", "round"]


def to_uint8(img_B3HW: torch.Tensor, rule: RoundingRule = "truncate") -> torch.Tensor:
    """Quantise float images in [0, 1] to ``uint8`` with an explicit rule.

    Values are clamped to [0, 1] and computed in float32 as ``v = x * 255``, then
    - ``"truncate"`` (default): ``floor(v)``. This is what VAR's public demo does (``mul(255)`` then
      ``astype(uint8)``) and what ADM's sampler does, so FID stays comparable with VAR's published numbers
      (docs/REFERENCES.md L16). Biased by −0.5 grey levels on average.
    - ``"round"``: round half up, ``floor(v + 0.5)``; unbiased, but not what the published numbers used.

    Args:
        img_B3HW: float tensor in [0, 1], any leading shape with channels at dim -3 (``(3, H, W)`` works too).
        rule: ``"truncate"`` or ``"round"``; record the choice with the results.

    Returns:
        ``uint8`` tensor of the same shape and device.

    Raises:
        ValueError: non-floating input, NaN/inf values, or an unknown rule (silently quantising NaN would give
            undefined bytes and a meaningless FID).
    """
    if not img_B3HW.is_floating_point():
        raise ValueError(f"to_uint8 expects float images in [0, 1], got dtype {img_B3HW.dtype}")
    if rule not in ("truncate", "round"):
        raise ValueError(f"unknown rounding rule {rule!r}; use 'truncate' or 'round'")
    # float32 arithmetic on purpose: bf16/fp16 cannot represent x*255 exactly, and float32 is what VAR's demo uses.
    x = img_B3HW.float()
    if not torch.isfinite(x).all():
        raise ValueError("to_uint8: images contain NaN or inf values")
    v = x.clamp(0.0, 1.0) * 255.0
    if rule == "round":
        v = v + 0.5
    return v.floor_().clamp_(0, 255).to(torch.uint8)


def save_png(path: str | os.PathLike, img_3HW: torch.Tensor) -> None:
    """Write one ``uint8`` RGB image ``(3, H, W)`` as a lossless PNG (JPEG would change FID, docs/REFERENCES.md L16)."""
    if img_3HW.dtype != torch.uint8 or img_3HW.dim() != 3 or img_3HW.shape[0] != 3:
        raise ValueError(f"save_png expects a uint8 tensor (3, H, W), got {img_3HW.dtype} {tuple(img_3HW.shape)}")
    arr_HW3 = img_3HW.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(arr_HW3).save(path, format="PNG")


def list_images(
    folder: str | os.PathLike, exts: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = False
) -> list[Path]:
    """Image files in ``folder`` with one of ``exts`` (case-insensitive), sorted by path like torch-fidelity."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    wanted = {"." + e.lower().lstrip(".") for e in exts}
    candidates = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in wanted)


def adm_center_crop(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """Resize-and-center-crop exactly as ADM's ``center_crop_arr`` (guided-diffusion ``image_datasets.py``).

    The ADM ImageNet reference batches were made with this rule: halve with BOX filtering while the short side is
    at least ``2 * image_size``, bicubic-resize the short side to ``image_size`` (sizes rounded), then take the
    central ``image_size`` square (offset floored). An image already ``image_size`` square is returned unchanged.

    Returns:
        ``uint8`` array ``(image_size, image_size, 3)``.
    """
    img = pil_image.convert("RGB")
    while min(*img.size) >= 2 * image_size:
        img = img.resize(tuple(x // 2 for x in img.size), resample=Image.BOX)
    scale = image_size / min(*img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), resample=Image.BICUBIC)
    arr_HW3 = np.asarray(img)
    top = (arr_HW3.shape[0] - image_size) // 2
    left = (arr_HW3.shape[1] - image_size) // 2
    return arr_HW3[top : top + image_size, left : left + image_size]


def load_image(path: str | os.PathLike, image_size: int | None = None) -> torch.Tensor:
    """Load one image as ``uint8`` RGB ``(3, H, W)``; with ``image_size`` apply :func:`adm_center_crop`."""
    with Image.open(path) as pil_image:
        if image_size is None:
            arr_HW3 = np.asarray(pil_image.convert("RGB"))
        else:
            arr_HW3 = adm_center_crop(pil_image, image_size)
    # np.array copies: PIL's buffer is read-only, and the crop is a view.
    return torch.from_numpy(np.array(arr_HW3)).permute(2, 0, 1).contiguous()


def load_png_folder(
    folder: str | os.PathLike,
    image_size: int | None = None,
    exts: Sequence[str] = ("png",),
    recursive: bool = False,
) -> torch.Tensor:
    """Load every image of a folder into one ``uint8`` tensor ``(N, 3, H, W)`` (sorted by path).

    Meant for small sets (tests, previews): 50 000 images at 256² take 9.8 GB. Stream with :func:`list_images` and
    :func:`load_image` for full evaluations.

    Raises:
        FileNotFoundError: the folder has no matching image.
        ValueError: images differ in size and no ``image_size`` was given.
    """
    paths = list_images(folder, exts, recursive)
    if not paths:
        raise FileNotFoundError(f"no {'/'.join(exts)} images found in {folder}")
    imgs = [load_image(p, image_size) for p in paths]
    sizes = {tuple(t.shape) for t in imgs}
    if len(sizes) != 1:
        raise ValueError(f"images in {folder} have different sizes {sorted(sizes)}; pass image_size to center-crop")
    return torch.stack(imgs)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}


def pack_adm_npz(
    folder_or_pngs: str | os.PathLike | Sequence[str | os.PathLike],
    out_path: str | os.PathLike,
    expected_count: int | None = None,
    labels: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Pack PNG samples into an ADM-evaluator sample batch: ``arr_0`` ``(N, H, W, 3)`` uint8, optional ``arr_1``.

    The images are streamed into the (uncompressed, zip64) archive one at a time, so 50 000 samples need no 9.8 GB
    array in memory; the file is the same as ``np.savez(out_path, arr_0=..., arr_1=...)``. Written to a temporary
    name and renamed, so an interrupted run never leaves a truncated ``.npz`` behind.

    Args:
        folder_or_pngs: a folder (its ``*.png`` files, sorted) or an explicit sequence of image paths (kept in order).
        out_path: destination ``.npz``.
        expected_count: when given, the number of images must match (catches missing/extra samples before a
            50k-sample evaluation silently runs on the wrong count).
        labels: optional class labels, one per image, stored as ``arr_1`` int64.

    Returns:
        ``out_path`` as a :class:`Path`.
    """
    if isinstance(folder_or_pngs, (str, os.PathLike)):
        paths = list_images(folder_or_pngs, exts=("png",))
        where = str(folder_or_pngs)
    else:
        paths = [Path(p) for p in folder_or_pngs]
        where = f"the {len(paths)} given paths"
    if not paths:
        raise FileNotFoundError(f"no PNG samples found in {where}")
    if expected_count is not None and len(paths) != expected_count:
        raise ValueError(f"found {len(paths)} samples in {where}, expected {expected_count}")
    labels_N = None
    if labels is not None:
        labels_N = np.asarray(labels, dtype=np.int64)
        if labels_N.shape != (len(paths),):
            raise ValueError(f"labels must have shape ({len(paths)},), got {labels_N.shape}")

    first_HW3 = load_image(paths[0]).permute(1, 2, 0).numpy()
    shape_NHW3 = (len(paths), *first_HW3.shape)
    out_path = Path(out_path)
    tmp_path = out_path.with_name(out_path.name + ".tmp")
    try:
        with zipfile.ZipFile(tmp_path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, _npy_header(shape_NHW3, np.uint8))
                for path in paths:
                    arr_HW3 = load_image(path).permute(1, 2, 0).numpy()
                    if arr_HW3.shape != first_HW3.shape:
                        raise ValueError(f"{path} has shape {arr_HW3.shape}, expected {first_HW3.shape}")
                    f.write(np.ascontiguousarray(arr_HW3).tobytes())
            if labels_N is not None:
                with zf.open("arr_1.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, labels_N, allow_pickle=False)
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path
