"""Typed configuration of an evaluation run (`eval.py`), read with `varianttrain.config_io`.

Every field can be set in YAML (`configs/eval_d30.yaml`) or with ``--set section.key=value``; `eval.py`'s
convenience flags (``--depth``, ``--mode``, ...) are shorthands for such overrides. Unknown keys are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from varianttrain.evaluation.images import RoundingRule
from varianttrain.evaluation.seeds import SeedRule
from varianttrain.models.depth_plan import SubsetRule
from varianttrain.models.var import RELEASED_PATCH_NUMS
from varianttrain.sampling.config import AutocastDtype, SamplingConfig, SamplingProtocol


@dataclass(frozen=True)
class ModelSection:
    """Where the weights come from. The VAR architecture is read off the checkpoint; patch_nums cannot be."""

    var: Path | None = None  # released .pth, trainer/Lightning checkpoint, or an export (.pth / .safetensors)
    vqvae: Path | None = None  # vae_ch160v4096z32.pth
    # Take the EMA weights of a Lightning training checkpoint. Not for exports: an export holds the weights that
    # `export --ema` chose, and its architecture (patch_nums included) wins over this section.
    ema: bool = False
    patch_nums: tuple[int, ...] = RELEASED_PATCH_NUMS
    vqvae_ch: int | None = None  # base width of the VQVAE; None: read off the checkpoint (encoder.conv_in)
    device: str = "auto"  # 'auto' (cuda:LOCAL_RANK when available, else cpu), 'cpu', 'cuda', 'cuda:1'


@dataclass(frozen=True)
class SamplingSection:
    """Sampling protocol: a preset (docs/REFERENCES.md#sampling-protocols) plus overrides of single settings."""

    protocol: SamplingProtocol = "official"  # 'official': top-k 900; 'code': CoDe/VARiant, top-k 600, T 1.1
    cfg: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    temperature: tuple[float, ...] | None = None
    autocast_dtype: AutocastDtype | None = None

    def build(self) -> SamplingConfig:
        """The `SamplingConfig` of the preset with the overrides applied."""
        base = SamplingConfig.preset(self.protocol)
        overrides = {k: getattr(self, k) for k in ("cfg", "top_k", "top_p", "temperature", "autocast_dtype")
                     if getattr(self, k) is not None}
        if not overrides:
            return base
        return replace(base, **overrides)


@dataclass(frozen=True)
class BudgetSection:
    """The compute budget: a VARiant subnet of `depth` blocks after `bridge_scales` full scales (see registry)."""

    depth: int | None = None  # None: full depth (the budget of the unmodified model)
    bridge_scales: int | None = None  # N; None: the export's metadata, else 6
    subset_rule: SubsetRule = "nested"  # an export's metadata wins
    depth_choices: tuple[int, ...] = (2, 4, 8, 16)  # trained subnet depths (nested rule); an export's metadata wins
    reference_scale: int | None = None  # DepthVAR's R (last full scale) override; None: derived from the budget


@dataclass(frozen=True)
class GenerationSection:
    """Which images, with which seeds, in what batches."""

    samples_per_class: int = 50
    num_classes: int | None = None  # None: every class of the model (1000 for ImageNet)
    classes: tuple[int, ...] = ()  # explicit class list (wins over num_classes)
    seed: int = 0
    seed_rule: SeedRule = "hash"  # see varianttrain.evaluation.seeds.image_seed
    batch_size: int = 32  # images per sampling call; also the sharding unit across ranks
    rounding: RoundingRule = "truncate"  # float -> uint8 rule (truncate = VAR's demo)
    save_npz: bool = True  # pack out/<method>/samples.npz (ADM evaluator format) after generation

    def __post_init__(self) -> None:
        if self.samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {self.samples_per_class}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class MetricsSection:
    """FID / IS / precision-recall. Nothing is downloaded: weights and reference statistics are files."""

    enabled: bool = True
    extractor: Literal["inception", "demo-classifier"] = "inception"
    inception_weights: Path | None = None  # weights-inception-2015-12-05-6726825d.pth (docs/REFERENCES.md L10)
    demo_classifier: Path | None = None  # for extractor: demo-classifier
    ref_stats: Path | None = None  # VIRTUAL_imagenet256_labeled.npz or any npz with mu/sigma
    ref_folder: Path | None = None  # a folder of real images (used when ref_stats is not set)
    feature_batch_size: int = 100  # fixed extractor batch (GPU features depend slightly on it)
    is_splits: int = 10
    precision_recall: bool = False  # needs reference images: arr_0 of ref_stats, or ref_folder


@dataclass(frozen=True)
class CostSection:
    """Latency / memory measurement."""

    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    warmup: int = 3
    repeats: int = 10
    reference_full: bool = True  # always time `full` as well, so every row has a speedup


@dataclass(frozen=True)
class EvalConfig:
    """A complete evaluation run."""

    model: ModelSection = field(default_factory=ModelSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    cost: CostSection = field(default_factory=CostSection)
    methods: tuple[str, ...] = ("all",)  # names, comma lists or 'all' (registry order)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method knobs
    out_dir: Path = Path("runs/eval")
    overwrite: bool = False  # replace report.json/.md/.png instead of writing report-2.*, ...
    cost_only: bool = False  # skip generation and metrics
