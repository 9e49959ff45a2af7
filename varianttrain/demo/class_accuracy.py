"""Does a generated sample show the requested class? Demo-classifier accuracy of generated images, and the demo
FID reference statistics.

`eval.py` names every sample `c<class>_i<index>.png` (`varianttrain.evaluation.seeds.sample_name`), so the requested
class of a PNG is in its name; the demo classifier (`checkpoints/demo/classifier.pt`) predicts the shown class.

    python -m varianttrain.demo.class_accuracy runs/demo/000/eval_d4      # every <method>/samples under it
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from varianttrain.demo import DEMO_CHECKPOINTS, DEMO_DATA

_NAME = re.compile(r"c(\d+)_i(\d+)\.png$")


@torch.inference_mode()
def accuracy_of_images(extractor: Any, images_B3HW: torch.Tensor, labels_B: torch.Tensor) -> tuple[int, int]:
    """(correct, total) of uint8 images against their requested labels."""
    pred = extractor(images_B3HW)[1].argmax(-1).cpu()
    return int((pred == labels_B.cpu()).sum()), len(labels_B)


def sample_dir_accuracy(sample_dir: str | Path, extractor: Any, batch: int = 100) -> dict[str, Any]:
    """Accuracy over every `c<class>_i<index>.png` in `sample_dir`, overall and per class."""
    from varianttrain.evaluation.images import load_image

    files = sorted(p for p in Path(sample_dir).glob("*.png") if _NAME.search(p.name))
    if not files:
        raise FileNotFoundError(f"no c<class>_i<index>.png samples in {sample_dir}")
    labels = torch.tensor([int(_NAME.search(p.name).group(1)) for p in files])
    correct_C: dict[int, list[int]] = {}
    total = 0
    for i in range(0, len(files), batch):
        images = torch.stack([load_image(p) for p in files[i:i + batch]])
        pred = extractor(images)[1].argmax(-1).cpu()
        for lab, ok in zip(labels[i:i + batch].tolist(), (pred == labels[i:i + batch]).tolist(), strict=True):
            correct_C.setdefault(lab, []).append(int(ok))
            total += int(ok)
    per_class = {c: sum(v) / len(v) for c, v in sorted(correct_C.items())}
    return {"class_acc": total / len(files), "num_samples": len(files), "per_class": per_class}


def eval_dir_accuracy(eval_dir: str | Path, extractor: Any) -> dict[str, dict[str, Any]]:
    """`sample_dir_accuracy` of every `<method>/samples` folder of an eval.py output folder."""
    out = {}
    for samples in sorted(Path(eval_dir).glob("*/samples")):
        out[samples.parent.name] = sample_dir_accuracy(samples, extractor)
    return out


@torch.inference_mode()
def reference_stats(data_dir: str | Path, extractor: Any, out_path: str | Path, split: str = "val",
                    batch: int = 100) -> Path:
    """Demo-classifier feature statistics (mu, sigma) of the real demo images of `split`, as an npz eval.py reads
    (`metrics.ref_stats`). The ImageFolder tree is nested per class, which `metrics.ref_folder` does not read."""
    from varianttrain.demo.artifacts import folder_images, image_batches
    from varianttrain.evaluation.metrics import MetricsAccumulator, save_reference_stats

    paths, _ = folder_images(data_dir, split)
    acc = MetricsAccumulator(extractor, keep_logits=False, batch_size=batch)
    for images in image_batches(paths, batch):
        acc.update(images)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return save_reference_stats(out_path, acc.stats)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("eval_dirs", nargs="+", help="eval.py output folders (holding <method>/samples)")
    parser.add_argument("--classifier", default=f"{DEMO_CHECKPOINTS}/classifier.pt")
    args = parser.parse_args(argv)
    from varianttrain.checkpoints import load_demo_extractor

    extractor = load_demo_extractor(args.classifier)
    result = {str(d): {m: {k: v for k, v in r.items() if k != "per_class"} for m, r in
                       eval_dir_accuracy(d, extractor).items()} for d in args.eval_dirs}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

__all__ = ["DEMO_DATA", "accuracy_of_images", "eval_dir_accuracy", "reference_stats", "sample_dir_accuracy"]
