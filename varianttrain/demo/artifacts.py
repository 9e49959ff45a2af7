"""The shipped demo models: conversion from training runs, SHA-256 sums, loading, tokenised data, measurements.

    python -m varianttrain.demo.artifacts tokenizer runs/demo_tokenizer/000      # -> checkpoints/demo/vqvae.{pth,json}
    python -m varianttrain.demo.artifacts tokens                                # -> data/demo_tokens/{train,val}
    python -m varianttrain.demo.artifacts classifier runs/demo_classifier/000   # -> checkpoints/demo/classifier.pt
    python -m varianttrain.demo.artifacts var runs/demo_var_pretrain/000 [--name supernet_d12]  # -> var_d12.{pth,json}
    python -m varianttrain.demo.artifacts sums | verify | report

Storage: every floating-point tensor is stored as float16 (the three models fit in a few MB); loading copies them
into float32 modules (`load_state_dict` casts), so the models always run in float32. The tokens the demo VAR is
trained on come from the *shipped* (float16-rounded) tokenizer, so training and sampling see the same codebook.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from varianttrain.demo import DEMO_CHECKPOINTS, DEMO_DATA, DEMO_TOKENS
from varianttrain.file_hash import sha256_file

VQVAE_FILE, CLASSIFIER_FILE, SUMS_FILE = "vqvae.pth", "classifier.pt", "SHA256SUMS"
TOKENS_SOURCE = "source.json"


def var_file(ckpt_dir: str | Path = DEMO_CHECKPOINTS) -> Path:
    """The shipped VAR export (`var_d<D>.pth`; exactly one is shipped)."""
    found = sorted(Path(ckpt_dir).glob("var_d*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one var_d*.pth in {ckpt_dir}, found {[p.name for p in found]}; rebuild "
                                "with checkpoints/demo/RECIPE.md")
    return found[0]


def supernet_file(ckpt_dir: str | Path = DEMO_CHECKPOINTS) -> Path:
    """The shipped supernet export (`supernet_d<D>.pth`: configs/demo/supernet.yaml run to the end)."""
    found = sorted(Path(ckpt_dir).glob("supernet_d*.pth"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one supernet_d*.pth in {ckpt_dir}, found {[p.name for p in found]}; "
                                f"restore it (git checkout -- {ckpt_dir}), rebuild it (checkpoints/demo/RECIPE.md) "
                                "or train your own: python demo.py --full-finetune")
    return found[0]


# ------------------------------------------------------------------------------------------------ storage / sums
def half_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float16 copies of the floating-point tensors (integer buffers unchanged), contiguous, on the CPU."""
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state.items()}


def shipped_files(ckpt_dir: str | Path = DEMO_CHECKPOINTS) -> list[Path]:
    """The files covered by SHA256SUMS: everything in the folder except the sums file and the recipe."""
    return sorted(p for p in Path(ckpt_dir).iterdir() if p.is_file() and p.name not in (SUMS_FILE, "RECIPE.md"))


def write_sums(ckpt_dir: str | Path = DEMO_CHECKPOINTS) -> Path:
    """Write `SHA256SUMS` (`sha256sum -c` format) for every shipped file."""
    ckpt_dir = Path(ckpt_dir)
    lines = [f"{sha256_file(p)}  {p.name}\n" for p in shipped_files(ckpt_dir)]
    (ckpt_dir / SUMS_FILE).write_text("".join(lines))
    return ckpt_dir / SUMS_FILE


def verify_sums(ckpt_dir: str | Path = DEMO_CHECKPOINTS) -> list[str]:
    """Problems found (empty list = every file listed in SHA256SUMS exists and matches, and none is unlisted)."""
    ckpt_dir = Path(ckpt_dir)
    sums = ckpt_dir / SUMS_FILE
    if not sums.is_file():
        return [f"{sums} is missing"]
    problems, listed = [], set()
    for line in sums.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")
        listed.add(name)
        path = ckpt_dir / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_file(path) != digest:
            problems.append(f"{path} does not match its SHA-256 in {sums} (modified or truncated)")
    problems += [f"{p} is not listed in {sums}" for p in shipped_files(ckpt_dir) if p.name not in listed]
    return problems


# ------------------------------------------------------------------------------------------------ run -> files
def run_checkpoint(run: str | Path) -> Path:
    """A run directory's newest complete checkpoint (what `--resume` would continue), or the file itself.

    By modification time, not by name: after a `--resume` Lightning writes `last-v1.ckpt`, ... next to an older
    `last.ckpt`.
    """
    from varianttrain.training.runner import resume_checkpoint

    run = Path(run)
    return run if run.is_file() else resume_checkpoint(run)


def ship_tokenizer(run: str | Path, out_dir: str | Path = DEMO_CHECKPOINTS) -> list[Path]:
    """`vqvae.pth` (float16 state dict, release layout) + `vqvae.json` (the `load_exported_vqvae` description)."""
    from varianttrain.checkpoints import load_vqvae_weights, read_file, save_vqvae_export
    from varianttrain.config_io import from_dict, to_dict
    from varianttrain.demo.tokenizer_task import TokenizerTaskConfig
    from varianttrain.models.vqvae import VQVAE

    ckpt_path = run_checkpoint(run)
    ckpt = read_file(ckpt_path)
    task_cfg = from_dict(TokenizerTaskConfig, ckpt["hyper_parameters"]["task_cfg"], where=str(ckpt_path))
    vqvae = VQVAE(task_cfg.vqvae_config())
    load_vqvae_weights(vqvae, ckpt_path)
    paths = save_vqvae_export(Path(out_dir) / VQVAE_FILE, half_state(vqvae.state_dict()), task_cfg.vqvae_config(),
                              global_step=int(ckpt.get("global_step", 0)), task_config=to_dict(task_cfg),
                              storage_dtype="float16", source_checkpoint=str(ckpt_path))
    return list(paths)


def ship_classifier(run: str | Path, out_dir: str | Path = DEMO_CHECKPOINTS) -> Path:
    """`classifier.pt` in the classifier file format, float16 storage."""
    from varianttrain.checkpoints import load_demo_extractor, read_file, save_demo_classifier
    from varianttrain.models.demo_classifier import net_arch

    ckpt_path = run_checkpoint(run)
    extractor = load_demo_extractor(ckpt_path)
    ckpt = read_file(ckpt_path)
    task_cfg = dict(ckpt["hyper_parameters"]["task_cfg"])
    return save_demo_classifier(Path(out_dir) / CLASSIFIER_FILE, half_state(extractor.net.state_dict()),
                                net_arch(task_cfg), extractor.resolution, task_cfg, storage_dtype="float16")


def ship_var(run: str | Path, out_dir: str | Path = DEMO_CHECKPOINTS, ema: bool = True,
             name: str | None = None) -> list[Path]:
    """`<name>.pth` (float16, official key layout) + `<name>.json` (export metadata) via `varianttrain.export`.

    `name`: default `var_d<D>` (the base model); the supernet and CoDe's refiner ship under their own names
    (`supernet_d<D>`, `refiner_d<D>`), so the base model stays the one `var_d*.pth`.
    """
    from varianttrain.checkpoints import load_export
    from varianttrain.export import export_checkpoint

    ckpt_path = run_checkpoint(run)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_checkpoint(ckpt_path, tmp, ema=ema, formats=("pth",), overwrite=True)
        pth = next(p for p in paths if p.suffix == ".pth")
        _, state, meta = load_export(pth)
    stem = name or f"var_d{meta['depth']}"
    torch.save(half_state(state), out / f"{stem}.pth")
    # The shipped file names the tokenizer by its shipped name and hash, not by a path of the training machine.
    vq = Path(str(meta.get("vqvae_checkpoint") or ""))
    if vq.is_file():
        meta.update(vqvae_checkpoint=VQVAE_FILE, vqvae_sha256=sha256_file(vq))
    meta.update(storage_dtype="float16", source_checkpoint=str(ckpt_path))
    (out / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    return [out / f"{stem}.pth", out / f"{stem}.json"]


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class DemoModels:
    """The shipped models, float32, eval mode, on the CPU."""

    var: Any
    vqvae: Any
    extractor: Any
    var_meta: dict[str, Any]
    var_path: Path
    vqvae_path: Path
    classifier_path: Path


def load_demo_models(ckpt_dir: str | Path = DEMO_CHECKPOINTS, var_path: str | Path | None = None) -> DemoModels:
    """Load the demo VAR (or another export of it, `var_path`), tokenizer and classifier as float32 modules."""
    from varianttrain.checkpoints import load_demo_extractor, load_exported_var, load_exported_vqvae

    ckpt_dir = Path(ckpt_dir)
    vpath = Path(var_path) if var_path is not None else var_file(ckpt_dir)
    var, meta = load_exported_var(vpath)
    vqvae = load_exported_vqvae(ckpt_dir / VQVAE_FILE).float()
    extractor = load_demo_extractor(ckpt_dir / CLASSIFIER_FILE).float()
    return DemoModels(var, vqvae, extractor, meta, vpath, ckpt_dir / VQVAE_FILE, ckpt_dir / CLASSIFIER_FILE)


# ------------------------------------------------------------------------------------------------ demo images
def folder_images(data_dir: str | Path, split: str) -> tuple[list[Path], list[int]]:
    """The PNGs of one split of the ImageFolder tree in sorted order, with their class indices."""
    root = Path(data_dir) / "folder" / split
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found; run: python -m varianttrain.demo.dataset --out {data_dir}")
    paths, labels = [], []
    for label, folder in enumerate(sorted(p for p in root.iterdir() if p.is_dir())):
        files = sorted(folder.glob("*.png"))
        paths += files
        labels += [label] * len(files)
    return paths, labels


def image_batches(paths: list[Path], batch: int) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) batches of PNG files."""
    from PIL import Image

    for i in range(0, len(paths), batch):
        arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths[i:i + batch]])
        yield torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def to_signed(images_B3HW: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [-1, 1] (the training transform's range), channels-last (faster CPU convolutions)."""
    return (images_B3HW.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)


def tokens_up_to_date(tokens_dir: str | Path, vqvae_path: str | Path, data_dir: str | Path,
                      flip_train: bool = True) -> bool:
    """Whether `tokens_dir` was written from this tokenizer file and this data set (by their hashes)."""
    src = Path(tokens_dir) / TOKENS_SOURCE
    if not src.is_file():
        return False
    info = json.loads(src.read_text())
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    return info.get("vqvae_sha256") == sha256_file(vqvae_path) and info.get("flip_train") == flip_train and \
        info.get("data_content_sha256") == manifest.get("content_sha256")


@torch.inference_mode()
def tokenize_demo(data_dir: str | Path = DEMO_DATA, vqvae_path: str | Path = DEMO_CHECKPOINTS / VQVAE_FILE,
                  out_dir: str | Path = DEMO_TOKENS, batch: int = 100, flip_train: bool = True,
                  log: Callable[[str], None] = print) -> Path:
    """Tokenise the demo images (native 64 px, no crop) into `out_dir/{train,val}` ('indices' data format).

    `flip_train`: the training split also gets every image mirrored left-right (twice the token sequences; a
    mirrored shape is still its class), the cheap augmentation pre-tokenised data can have. Reused when
    `out_dir/source.json` names the same tokenizer, data hashes and flip setting; rewritten otherwise.
    """
    from varianttrain.checkpoints import load_exported_vqvae
    from varianttrain.data.datamodule import write_index_dataset

    out = Path(out_dir)
    if tokens_up_to_date(out, vqvae_path, data_dir, flip_train):
        log(f"[demo] reusing tokens in {out}")
        return out
    vqvae = load_exported_vqvae(vqvae_path).float().to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    for split in ("train", "val"):
        paths, labels = folder_images(data_dir, split)
        flips = (False, True) if split == "train" and flip_train else (False,)
        idx = {flip: [] for flip in flips}
        t_split = time.perf_counter()
        for i, images in enumerate(image_batches(paths, batch)):
            for flip in flips:
                x = to_signed(images.flip(-1) if flip else images)
                idx[flip].append(torch.cat(vqvae.img_to_idxBl(x), dim=1))
            if i % 10 == 0:
                done, spent = min((i + 1) * batch, len(paths)), time.perf_counter() - t_split
                log(f"[demo] tokenising {split}: {done}/{len(paths)} images ({spent:.0f} s, about "
                    f"{spent / done * (len(paths) - done):.0f} s left)")
        write_index_dataset(out / split, torch.cat([torch.cat(v) for v in idx.values()]),
                            torch.tensor(labels * len(flips)), overwrite=True)
    manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
    (out / TOKENS_SOURCE).write_text(json.dumps({"vqvae": str(vqvae_path), "vqvae_sha256": sha256_file(vqvae_path),
                                                 "data": str(data_dir), "flip_train": flip_train,
                                                 "data_content_sha256": manifest["content_sha256"]}, indent=1) + "\n")
    log(f"[demo] tokenised the demo images into {out} in {time.perf_counter() - t0:.0f} s")
    return out


# ------------------------------------------------------------------------------------------------ measurements
@torch.inference_mode()
def classify(extractor, images_B3HW: torch.Tensor) -> torch.Tensor:
    """Predicted classes of uint8 images."""
    return extractor(images_B3HW)[1].argmax(-1)


@torch.inference_mode()
def measure_tokenizer(ckpt_dir: str | Path = DEMO_CHECKPOINTS, data_dir: str | Path = DEMO_DATA,
                      batch: int = 100) -> dict[str, Any]:
    """Reconstruction error of the shipped tokenizer on the demo validation images, codebook use, and the demo
    classifier's accuracy on real vs reconstructed validation images (the ceiling for generated samples)."""
    from varianttrain.checkpoints import load_demo_extractor, load_exported_vqvae

    ckpt_dir = Path(ckpt_dir)
    vqvae = load_exported_vqvae(ckpt_dir / VQVAE_FILE).float()
    extractor = load_demo_extractor(ckpt_dir / CLASSIFIER_FILE) if (ckpt_dir / CLASSIFIER_FILE).is_file() else None
    paths, labels = folder_images(data_dir, "val")
    label_N = torch.tensor(labels)
    l1 = mse = 0.0
    psnr, real_ok, rec_ok, codes = [], [], [], []
    for i, images in enumerate(image_batches(paths, batch)):
        x = to_signed(images)
        idx = vqvae.img_to_idxBl(x)
        codes.append(torch.cat(idx, dim=1))
        rec = vqvae.idxBl_to_img(idx, last_one=True).float()
        diff = rec - x.float()
        l1 += diff.abs().mean().item() * len(images)
        mse += diff.square().mean().item() * len(images)
        mse_B = (diff / 2).square().flatten(1).mean(1)  # on the [0, 1] scale, as the tokenizer task logs PSNR
        psnr.append(-10 * torch.log10(mse_B.clamp_min(1e-10)))
        if extractor is not None:
            lab = label_N[i * batch:i * batch + len(images)]
            rec_u8 = ((rec + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
            real_ok.append(classify(extractor, images) == lab)
            rec_ok.append(classify(extractor, rec_u8) == lab)
    n = len(paths)
    codes_NL = torch.cat(codes)
    V = vqvae.quantize.vocab_size if hasattr(vqvae.quantize, "vocab_size") else int(codes_NL.max()) + 1
    out: dict[str, Any] = {"images": n, "l1": l1 / n, "mse": mse / n, "psnr_db": torch.cat(psnr).mean().item(),
                           "codes_used": int(codes_NL.unique().numel()), "vocab_size": int(V)}
    if extractor is not None:
        out["classifier_acc_real"] = torch.cat(real_ok).float().mean().item()
        out["classifier_acc_reconstructed"] = torch.cat(rec_ok).float().mean().item()
    return out


def save_reconstruction_grid(path: str | Path, ckpt_dir: str | Path = DEMO_CHECKPOINTS,
                             data_dir: str | Path = DEMO_DATA, per_class: int = 2) -> Path:
    """Originals (odd rows) above their reconstructions (even rows), `per_class` validation images per class."""
    from torchvision.utils import save_image

    from varianttrain.checkpoints import load_exported_vqvae

    vqvae = load_exported_vqvae(Path(ckpt_dir) / VQVAE_FILE).float()
    paths, labels = folder_images(data_dir, "val")
    pick = [next(i for i, lab in enumerate(labels) if lab == c) + j for c in sorted(set(labels)) for j in
            range(per_class)]
    images = next(image_batches([paths[i] for i in pick], len(pick)))
    with torch.inference_mode():
        x = to_signed(images)
        rec = vqvae.img_to_reconstructed_img(x, last_one=True)
    grid = torch.cat([x.float(), rec.float()]).add(1).div(2)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path, nrow=len(pick), padding=2, pad_value=1.0)
    return Path(path)


@torch.inference_mode()
def measure_classifier(ckpt_dir: str | Path = DEMO_CHECKPOINTS, data_dir: str | Path = DEMO_DATA) -> dict[str, Any]:
    """Accuracy of the shipped demo classifier on the demo validation images."""
    from varianttrain.checkpoints import load_demo_extractor

    extractor = load_demo_extractor(Path(ckpt_dir) / CLASSIFIER_FILE)
    paths, labels = folder_images(data_dir, "val")
    pred = torch.cat([classify(extractor, b) for b in image_batches(paths, 100)])
    return {"images": len(paths), "val_acc": (pred == torch.tensor(labels)).float().mean().item()}


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("tokenizer", "classifier", "var"):
        p = sub.add_parser(name, help=f"convert a {name} training run into checkpoints/demo files")
        p.add_argument("run", help="run directory (runs/demo_<task>/NNN) or a .ckpt file")
        p.add_argument("--out", default=DEMO_CHECKPOINTS)
        if name == "var":
            p.add_argument("--no-ema", action="store_true", help="ship the raw weights instead of the EMA")
            p.add_argument("--name", default=None, help="file stem (default var_d<D>; e.g. supernet_d12, refiner_d4)")
    p = sub.add_parser("tokens", help="tokenise data/demo with the shipped tokenizer (data/demo_tokens)")
    p.add_argument("--data", default=DEMO_DATA)
    p.add_argument("--out", default=DEMO_TOKENS)
    p.add_argument("--ckpt-dir", default=DEMO_CHECKPOINTS)
    for name in ("sums", "verify", "report"):
        p = sub.add_parser(name)
        p.add_argument("--ckpt-dir", default=DEMO_CHECKPOINTS)
        if name == "report":
            p.add_argument("--data", default=DEMO_DATA)
            p.add_argument("--grid", default=None, help="also save a reconstruction grid PNG here")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if args.cmd == "tokenizer":
        print(*ship_tokenizer(args.run, args.out), sep="\n")
    elif args.cmd == "classifier":
        print(ship_classifier(args.run, args.out))
    elif args.cmd == "var":
        print(*ship_var(args.run, args.out, ema=not args.no_ema, name=args.name), sep="\n")
    elif args.cmd == "tokens":
        tokenize_demo(args.data, Path(args.ckpt_dir) / VQVAE_FILE, args.out)
    elif args.cmd == "sums":
        print(write_sums(args.ckpt_dir).read_text(), end="")
    elif args.cmd == "verify":
        problems = verify_sums(args.ckpt_dir)
        print("\n".join(problems) or f"{args.ckpt_dir}: all files match {SUMS_FILE}")
        return 1 if problems else 0
    elif args.cmd == "report":
        report: dict[str, Any] = {"tokenizer": measure_tokenizer(args.ckpt_dir, args.data)}
        if (Path(args.ckpt_dir) / CLASSIFIER_FILE).is_file():
            report["classifier"] = measure_classifier(args.ckpt_dir, args.data)
        if args.grid:
            report["grid"] = str(save_reconstruction_grid(args.grid, args.ckpt_dir, args.data))
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DemoModels", "half_state", "load_demo_models", "measure_classifier", "measure_tokenizer",
           "run_checkpoint", "ship_classifier", "ship_tokenizer", "ship_var", "supernet_file", "tokenize_demo",
           "verify_sums", "write_sums"]
