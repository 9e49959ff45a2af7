"""Inspecting the input files of an evaluation without loading them: weights, VQVAE, metric inputs, output folder.

Every function appends one line per problem to a list instead of raising, so `preflight` can report every problem
of a run at once. Weight files are memory-mapped (`weights.open_weights`): shapes, metadata and the fit of the
state dict to its architecture are checked without reading the tensors, so an 8 GB checkpoint costs milliseconds.
A missing file that the downloader knows is reported with the command that fetches it (`download.fetch_hint`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from varianttrain.checkpoints import (
    EXPORT_FORMAT,
    CheckpointError,
    extract_var_state_dict,
    var_config_from_metadata,
    var_config_from_state,
)
from varianttrain.checkpoints.files import mismatch_report
from varianttrain.checkpoints.vqvae import extract_vqvae_state_dict
from varianttrain.download import fetch_hint
from varianttrain.evaluation.budget_facts import SupernetFacts, facts_from_export, facts_from_training_checkpoint
from varianttrain.evaluation.config import MetricsSection, ModelSection
from varianttrain.evaluation.weights import open_weights
from varianttrain.models.var import VAR, VARConfig
from varianttrain.paths import output_folder_problem

FLAGS = {"base": "--base", "supernet": "--supernet", "refiner": "--refiner", "vqvae": "--vqvae"}
WHAT = {"base": "base model (the released VAR the training-free methods run on)",
        "supernet": "VARiant supernet", "refiner": "CoDe refiner", "vqvae": "VQVAE"}
INCEPTION_FEATURES = 2048


class EvalInputError(RuntimeError):
    """A required input (file or config key) is missing or inconsistent; the message says how to fix it."""


def missing_file(path: Path, key: str, flag: str | None, what: str, produce: str = "") -> str:
    """The one wording of a missing input: what, where it was looked for, how to set it, how to get it."""
    hint = fetch_hint(path)
    fix = f"fetch it with: {hint}" if hint else (produce or "pass the right path")
    setting = f"config key {key}" + (f", flag {flag}" if flag else "")
    return f"{what} {path} not found ({setting}); {fix}"


# ------------------------------------------------------------------------------------------------------ weights
@dataclass
class WeightsInput:
    """A VAR weight file as the run will use it (tensors still memory-mapped)."""

    role: str
    path: Path
    kind: str  # 'export', 'training checkpoint', 'state dict'
    config: VARConfig
    state: Mapping[str, torch.Tensor]
    ema: bool  # the weights are EMA weights
    facts: SupernetFacts | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sidecar: Path | None = None  # an export's metadata JSON (part of what defines the weights)
    vqvae_hint: str | None = None  # the VQVAE the file's training used
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.path} ({self.kind}{', EMA weights' if self.ema else ''})"


def _read_export_metadata(path: Path, problems: list[str]) -> tuple[dict[str, Any] | None, Path | None]:
    """(metadata, sidecar) of an export, ({}, None) when `path` carries none, (None, ...) after a problem."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            problems.append(f"{sidecar} (the metadata of export {path.name}) is not readable JSON ({err}); the export "
                            "was interrupted or the file damaged: export again (python -m varianttrain.export CKPT "
                            "--out DIR) or restore the file")
            return None, sidecar
        where = sidecar
    elif path.suffix == ".safetensors":
        try:
            from varianttrain.checkpoints.export_format import safetensors_metadata

            metadata = safetensors_metadata(path)
        except Exception as err:  # noqa: BLE001 - a damaged header means the same thing whatever raised
            problems.append(f"{path}: unreadable safetensors file ({err}); export it again")
            return None, None
        where = path
    else:
        return {}, None
    if metadata and (not isinstance(metadata, dict) or metadata.get("format") != EXPORT_FORMAT):
        fmt = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        problems.append(f"{where}: format {fmt!r} is not a varianttrain export ({EXPORT_FORMAT!r})")
        return None, sidecar
    return metadata, (sidecar if sidecar.is_file() else None)


def _fits(config: VARConfig, state: Mapping[str, torch.Tensor]) -> str:
    """Missing / unexpected keys and shape mismatches of `state` against `config` (empty: it fits). The model is
    built on the meta device: shapes only, no memory."""
    with torch.device("meta"):
        model = VAR(config)
    return mismatch_report(model, state)


def inspect_weights(role: str, path: Path, model_cfg: ModelSection, problems: list[str]) -> WeightsInput | None:
    """The weight file of `role` (`base`, `supernet`, `refiner`), or None after adding its problems."""
    key, flag, what = f"model.{role}", FLAGS[role], WHAT[role]
    if not path.is_file():
        produce = ("export the supernet's training checkpoint (python -m varianttrain.export "
                   "runs/<run>/<NNN>/checkpoints/last.ckpt --out DIR --ema) and pass it with --supernet"
                   if role == "supernet" else "")
        problems.append(missing_file(path, key, flag, what, produce))
        return None
    start = len(problems)
    metadata, sidecar = _read_export_metadata(path, problems)
    if metadata is None:
        return None
    try:
        obj = open_weights(path)
    except CheckpointError as err:
        problems.append(f"{key}: {err}")
        return None
    notes: list[str] = []
    facts = None
    vqvae_hint = None
    try:
        if metadata:
            kind, ema = "export", bool(metadata.get("ema"))
            state = extract_var_state_dict(obj, str(path))
            try:
                config = var_config_from_metadata(metadata)
            except (KeyError, TypeError, ValueError) as err:
                problems.append(f"{sidecar or path}: incomplete export metadata ({err!r}); export again")
                return None
            facts = facts_from_export(metadata, f"export metadata {sidecar or path}")
            vqvae_hint = metadata.get("vqvae_checkpoint")
            if vqvae_hint and not Path(vqvae_hint).is_absolute() and (path.parent / vqvae_hint).is_file():
                vqvae_hint = str(path.parent / vqvae_hint)  # shipped exports name the tokenizer next to them
        else:
            training = isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping)
            kind = "training checkpoint" if training else "state dict"
            ema = bool(model_cfg.ema and training)
            if model_cfg.ema and not training:
                notes.append(f"model.ema applies to training checkpoints; {path} holds one set of weights")
            state = extract_var_state_dict(obj, str(path), prefer_ema=ema)
            patch_nums = tuple(model_cfg.patch_nums)
            entry = obj.get("varianttrain") if training else None
            if isinstance(entry, Mapping):
                facts = facts_from_training_checkpoint(entry, f"training checkpoint {path}")
                model = (entry.get("config") or {}).get("model") or {}
                patch_nums = tuple(model.get("patch_nums") or patch_nums)
                vqvae_hint = model.get("vqvae_checkpoint")
            config = var_config_from_state(state, patch_nums, str(path))
    except CheckpointError as err:
        problems.append(f"{key}: {err}")
        return None
    except KeyError as err:
        problems.append(f"{key}: {path} is not a complete VAR state dict (no {err.args[0]!r}); fetch or export it "
                        "again")
        return None
    report = _fits(config, state)
    if report:
        problems.append(f"{path} does not fit {config.describe()} (nothing would load):\n{report}")
    if len(problems) > start:
        return None
    return WeightsInput(role, path, kind, config, state, ema, facts, dict(metadata), sidecar, vqvae_hint, notes)


def check_same_architecture(a: WeightsInput, b: WeightsInput, problems: list[str]) -> None:
    """Base and supernet must be the same architecture: one budget, one FLOPs scale, one comparison."""
    fields_ = ("depth", "embed_dim", "num_classes", "vocab_size", "z_channels", "patch_nums")
    diffs = [f"{f} {getattr(a.config, f)} vs {getattr(b.config, f)}" for f in fields_
             if getattr(a.config, f) != getattr(b.config, f)]
    if diffs:
        problems.append(f"model.{a.role} ({a.path}) and model.{b.role} ({b.path}) are different architectures "
                        f"({'; '.join(diffs)}): the supernet must be a fine-tune of the base model")


def check_refiner(drafter: WeightsInput, refiner: WeightsInput, problems: list[str]) -> None:
    """CoDe's two models share the VQVAE, the pyramid and the classes (`methods.code.check_pair`, before loading)."""
    d, r = drafter.config, refiner.config
    diffs = [f"{what} {x} vs {y}" for what, x, y in (
        ("vocabulary", d.vocab_size, r.vocab_size), ("code channels", d.z_channels, r.z_channels),
        ("patch_nums", list(d.patch_nums), list(r.patch_nums)), ("classes", d.num_classes, r.num_classes)) if x != y]
    if diffs:
        problems.append(f"model.refiner {refiner.path} does not fit the drafter {drafter.path} ({'; '.join(diffs)}): "
                        "both must be VARs on the same VQVAE and classes (e.g. var_d30.pth with var_d16.pth)")


# ------------------------------------------------------------------------------------------------------- VQVAE
@dataclass(frozen=True)
class VQVAEInput:
    path: Path
    vocab_size: int
    z_channels: int
    downsample: int

    def image_size(self, patch_nums: tuple[int, ...]) -> int:
        return self.downsample * patch_nums[-1]


def inspect_vqvae(path: Path, problems: list[str], source: str = "config key model.vqvae") -> VQVAEInput | None:
    if not path.is_file():
        problems.append(missing_file(path, "model.vqvae", "--vqvae", "VQVAE checkpoint") +
                        ("" if source == "config key model.vqvae" else f" (named by {source})"))
        return None
    try:
        state = extract_vqvae_state_dict(open_weights(path), str(path))
    except CheckpointError as err:
        problems.append(f"model.vqvae: {err}")
        return None
    codebook = state["quantize.embedding.weight"]
    levels = {int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")}
    return VQVAEInput(path, int(codebook.shape[0]), int(codebook.shape[1]), 2 ** (len(levels) - 1))


def check_vqvae_fits(vqvae: VQVAEInput, var: WeightsInput, problems: list[str]) -> None:
    if (vqvae.vocab_size, vqvae.z_channels) != (var.config.vocab_size, var.config.z_channels):
        problems.append(f"model.vqvae {vqvae.path} has a {vqvae.vocab_size} x {vqvae.z_channels} codebook but "
                        f"model.{var.role} {var.path} expects {var.config.vocab_size} x {var.config.z_channels}: use "
                        "the tokenizer the VAR was trained with")


# ------------------------------------------------------------------------------------------------------ metrics
@dataclass
class MetricInputs:
    """What the metrics will compare against; filled when every check passed."""

    feature_width: int | None = None
    classifier_classes: int | None = None  # the demo classifier's classes (class accuracy), None for Inception
    kind: str = ""  # how the report labels its quality figure


def check_metric_inputs(m: MetricsSection, num_classes: int | None, problems: list[str]) -> MetricInputs:
    """Extractor weights, reference statistics (shape against the extractor) or reference images."""
    from varianttrain.evaluation.metrics import INCEPTION_WEIGHT_FILES

    out = MetricInputs()
    if m.extractor == "inception":
        out.kind = "FID (Inception)"
        if m.inception_weights is None:
            problems.append("no Inception weights given: set metrics.inception_weights (--inception-weights) to "
                            f"{INCEPTION_WEIGHT_FILES[0]}; fetch it with: python -m varianttrain.download inception "
                            "(or use --no-fid)")
        elif not Path(m.inception_weights).is_file():
            problems.append(missing_file(Path(m.inception_weights), "metrics.inception_weights", "--inception-weights",
                                         "Inception weights", f"it is {INCEPTION_WEIGHT_FILES[0]} (torch-fidelity "
                                         "release v0.2.0): python -m varianttrain.download inception"))
        else:
            out.feature_width = INCEPTION_FEATURES
    else:
        out.kind = "demo FID (demo classifier)"
        if m.demo_classifier is None:
            problems.append("metrics.extractor=demo-classifier needs metrics.demo_classifier "
                            "(--set metrics.demo_classifier=checkpoints/demo/classifier.pt)")
        elif not Path(m.demo_classifier).is_file():
            problems.append(missing_file(Path(m.demo_classifier), "metrics.demo_classifier", None,
                                         "demo classifier", "it ships in checkpoints/demo/ (git checkout restores "
                                         "it; docs/DEMO_MODELS.md rebuilds it)"))
        else:
            from varianttrain.checkpoints import load_demo_extractor

            try:
                extractor = load_demo_extractor(m.demo_classifier)  # 1 MB: cheap enough to check for real
            except CheckpointError as err:
                problems.append(f"metrics.demo_classifier: {err}")
            else:
                out.feature_width, out.classifier_classes = extractor.num_features, extractor.num_classes
                if num_classes is not None and extractor.num_classes != num_classes:
                    problems.append(f"the demo classifier {m.demo_classifier} tells {extractor.num_classes} classes "
                                    f"apart but the model generates {num_classes}: use the classifier of the model's "
                                    "data set")
    if m.ref_stats is not None:
        _check_ref_stats(Path(m.ref_stats), out.feature_width, m.precision_recall, problems)
    elif m.ref_folder is not None:
        _check_ref_folder(Path(m.ref_folder), problems)
    else:
        problems.append("FID needs reference statistics: pass --ref-stats VIRTUAL_imagenet256_labeled.npz (fetch it "
                        "with: python -m varianttrain.download adm_ref) or set metrics.ref_folder to a folder of real "
                        "images; --no-fid skips metrics")
    return out


def _check_ref_stats(path: Path, width: int | None, precision_recall: bool, problems: list[str]) -> None:
    import numpy as np

    if not path.is_file():
        problems.append(missing_file(path, "metrics.ref_stats", "--ref-stats", "FID reference statistics",
                                     "write one with varianttrain.evaluation.metrics.save_reference_stats, or use "
                                     "metrics.ref_folder"))
        return
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            shapes = {k: npz[k].shape for k in ("mu", "sigma") if k in keys}
            if "mu" in shapes and "sigma" in shapes:
                finite = bool(np.isfinite(npz["mu"]).all() and np.isfinite(npz["sigma"]).all())
    except Exception as err:  # noqa: BLE001 - zip, npy and OS errors all mean "not a readable npz"
        problems.append(f"metrics.ref_stats {path} is not a readable .npz ({type(err).__name__}: {err}); fetch it "
                        "again (python -m varianttrain.download adm_ref) or recompute it")
        return
    if "mu" not in shapes or "sigma" not in shapes:
        problems.append(f"metrics.ref_stats {path} has keys {keys}; FID needs 'mu' and 'sigma'")
        return
    F = shapes["mu"][0] if len(shapes["mu"]) == 1 else None
    if F is None or shapes["sigma"] != (F, F):
        problems.append(f"metrics.ref_stats {path}: mu {shapes['mu']} / sigma {shapes['sigma']} are not (F,) / (F, F)")
    elif width is not None and F != width:
        problems.append(f"metrics.ref_stats {path} holds statistics of {F} features but the extractor gives {width}: "
                        "the statistics were computed with another network")
    elif not finite:
        problems.append(f"metrics.ref_stats {path}: mu / sigma contain NaN or inf; recompute them")
    if precision_recall and "arr_0" not in keys:
        problems.append(f"metrics.precision_recall needs reference images: {path} has no arr_0 (use the full "
                        "VIRTUAL_imagenet256_labeled.npz or metrics.ref_folder)")


def _check_ref_folder(path: Path, problems: list[str]) -> None:
    from varianttrain.evaluation.images import IMAGE_EXTENSIONS, list_images

    if not path.is_dir():
        problems.append(f"metrics.ref_folder {path} is not a folder of real images")
        return
    found = list_images(path, IMAGE_EXTENSIONS, recursive=True)
    if len(found) < 2:
        problems.append(f"metrics.ref_folder {path}: {len(found)} png/jpg images found (class subfolders included); "
                        "FID needs at least 2")


# ------------------------------------------------------------------------------------------------------- output
def check_output_dir(run_dir: Path, problems: list[str], bytes_needed: int = 0) -> None:
    """The run folder can be created and written, and (roughly) holds what the run will write."""
    existing, why = output_folder_problem(run_dir)
    if why is not None:
        problems.append(f"output folder {run_dir} cannot be written ({existing}: {why}); choose another with --out")
        return
    free = shutil.disk_usage(existing).free
    if bytes_needed > free:
        problems.append(f"output folder {run_dir} needs about {bytes_needed / 2**30:.2f} GiB for the samples, "
                        f"{free / 2**30:.2f} GiB are free on {existing}; free space, choose another --out, or set "
                        "generation.save_npz=false (the packed npz is about half of it)")
