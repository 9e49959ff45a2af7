"""Typed configuration of an evaluation run (`eval.py`), read with `varianttrain.config_io`.

Every field can be set in YAML (`configs/eval_d30.yaml`, the defaults of `eval.py` without ``--config``) or with
``--set section.key=value``; `eval.py`'s flags (``--depth``, ``--mode``, ...) are shorthands for such overrides.
Unknown keys are errors. Checks that need no file are made here, when the config is read; checks against the
weights and data files are `varianttrain.evaluation.inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from varianttrain.evaluation.images import RoundingRule
from varianttrain.evaluation.seeds import SeedRule
from varianttrain.models.depth_plan import SubsetRule
from varianttrain.models.var import RELEASED_PATCH_NUMS
from varianttrain.sampling.config import AutocastDtype, SamplingConfig, SamplingProtocol

WeightsRole = Literal["base", "supernet", "refiner"]


@dataclass(frozen=True)
class ModelSection:
    """Where the weights come from. Architectures are read off the files; a bare state dict's pyramid cannot be.

    Three model inputs, each optional, each used by the methods that need it (`MethodSpec.runs_on` / `needs`):
    the training-free methods run on the released model (`base`), as published; `variant` runs on the VARiant
    supernet (`supernet`), whose weights were fine-tuned for its layer subsets; CoDe drafts with `base` and
    refines with `refiner`. With ``--mode all`` a method whose input is not configured (null) is left out and the
    report says so; a configured file that is missing is an error.
    """

    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "var": "split into model.base (the released VAR, for full and the training-free methods; --base) and "
               "model.supernet (a VARiant export or training checkpoint, for variant; --supernet)"}

    base: Path | None = None  # released .pth (var_d30.pth), or a training checkpoint / export of a plain VAR
    supernet: Path | None = None  # VARiant export (.pth / .safetensors + metadata) or training checkpoint (.ckpt)
    refiner: Path | None = None  # CoDe's refiner: a smaller VAR on the same VQVAE (var_d16.pth)
    vqvae: Path | None = None  # vae_ch160v4096z32.pth; None: the VQVAE named by the supernet's metadata
    # Take the EMA weights of Lightning training checkpoints (.ckpt). Exports and released files hold one set of
    # weights and ignore it; the report names which weights every row used.
    ema: bool = False
    patch_nums: tuple[int, ...] = RELEASED_PATCH_NUMS  # for bare state dicts; exports and checkpoints carry theirs
    vqvae_ch: int | None = None  # base width of the VQVAE; None: read off the checkpoint (encoder.conv_in)
    device: str = "auto"  # 'auto' (cuda:LOCAL_RANK when available, else cpu), 'cpu', 'cuda', 'cuda:1'

    def path_of(self, role: WeightsRole) -> Path | None:
        return getattr(self, role)


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
    """The compute budget: the FLOPs of a VARiant subnet of `depth` blocks after `bridge_scales` full scales.

    bridge N, the subset rule, the depth choices (and the stored layer subsets) are facts of the supernet: they are
    read from its export metadata or training checkpoint. A value given here must agree with the supernet (a
    contradiction is an error naming both); without a supernet it is required for a budget below full depth.
    """

    depth: int | None = None  # None: full depth (the budget of the unmodified model)
    bridge_scales: int | None = None  # N; None: the supernet's
    subset_rule: SubsetRule | None = None  # None: the supernet's
    depth_choices: tuple[int, ...] | None = None  # trained subnet depths; None: the supernet's
    reference_scale: int | None = None  # DepthVAR's R (last full scale) override; None: derived from the budget

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"depth must be >= 1 (blocks of the subnet), got {self.depth}; omit it for full depth")
        if self.bridge_scales is not None and self.bridge_scales < 0:
            raise ValueError(f"bridge_scales must be >= 0, got {self.bridge_scales}")
        if self.depth_choices is not None and (not self.depth_choices or min(self.depth_choices) < 1):
            raise ValueError(f"depth_choices must be positive depths, got {list(self.depth_choices)}")
        if self.reference_scale is not None and self.reference_scale < 0:
            raise ValueError(f"reference_scale must be >= 0 (a scale index), got {self.reference_scale}")


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
    save_npz: bool = True  # pack out/<row>/samples.npz (ADM evaluator format) after generation

    def __post_init__(self) -> None:
        if self.samples_per_class < 1:
            raise ValueError(f"samples_per_class must be >= 1, got {self.samples_per_class}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 (the first N classes), got {self.num_classes}; omit it for "
                             "every class of the model")
        if any(c < 0 for c in self.classes) or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct class indices >= 0, got {list(self.classes)}")


@dataclass(frozen=True)
class MetricsSection:
    """FID / IS / precision-recall, their noise, fidelity to the full model. Nothing is downloaded."""

    enabled: bool = True
    extractor: Literal["inception", "demo-classifier"] = "inception"
    inception_weights: Path | None = None  # weights-inception-2015-12-05-6726825d.pth (docs/REFERENCES.md L10)
    demo_classifier: Path | None = None  # for extractor: demo-classifier
    ref_stats: Path | None = None  # VIRTUAL_imagenet256_labeled.npz or any npz with mu/sigma
    ref_folder: Path | None = None  # real images (class subfolders are searched); used when ref_stats is not set
    feature_batch_size: int = 100  # fixed extractor batch (GPU features depend slightly on it)
    is_splits: int = 10
    precision_recall: bool = False  # needs reference images: arr_0 of ref_stats, or ref_folder
    bootstrap_rounds: int = 200  # resamples of the images behind every standard error (0: no noise estimates)
    bootstrap_seed: int = 0
    fidelity: bool = True  # per-image PSNR / SSIM of every row against the full model's image with the same seed

    def __post_init__(self) -> None:
        if self.feature_batch_size < 1 or self.is_splits < 1:
            raise ValueError("feature_batch_size and is_splits must be >= 1")
        if self.bootstrap_rounds == 1 or self.bootstrap_rounds < 0:
            raise ValueError(f"bootstrap_rounds must be 0 (off) or >= 2, got {self.bootstrap_rounds}")


@dataclass(frozen=True)
class CostSection:
    """Latency / memory measurement."""

    enabled: bool = True
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    warmup: int = 3
    repeats: int = 10
    reference_full: bool = True  # always time `full` as well, so every row has a speedup

    def __post_init__(self) -> None:
        if self.enabled and (not self.batch_sizes or min(self.batch_sizes) < 1 or self.repeats < 1
                             or self.warmup < 0):
            raise ValueError(f"cost needs batch sizes >= 1, repeats >= 1 and warmup >= 0, got {list(self.batch_sizes)}"
                             f", {self.repeats}, {self.warmup}")


@dataclass(frozen=True)
class ReportSection:
    """What the report draws and flags."""

    grid_columns: int = 10  # samples per row of the side-by-side grid (the first sample of the first classes)
    # A method whose closed-form FLOPs exceed the budget by more than this fraction "cannot reach the budget": it is
    # reported at the FLOPs it ran, flagged in its row and drawn apart in the plots.
    budget_tolerance: float = 0.05

    def __post_init__(self) -> None:
        if self.grid_columns < 0 or self.budget_tolerance < 0:
            raise ValueError("grid_columns and budget_tolerance must be >= 0")


@dataclass(frozen=True)
class EvalConfig:
    """A complete evaluation run."""

    model: ModelSection = field(default_factory=ModelSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    cost: CostSection = field(default_factory=CostSection)
    report: ReportSection = field(default_factory=ReportSection)
    methods: tuple[str, ...] = ("all",)  # names, comma lists or 'all' (registry order)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method knobs
    # Root of the outputs; a run writes into <out_dir>/<budget> (d8, full), so budget sweeps never collide.
    out_dir: Path = Path("runs/eval")
    overwrite: bool = False  # replace report.json/.md/.png instead of writing report-2.*, ...
    cost_only: bool = False  # skip generation and metrics

    def run_dir(self) -> Path:
        """Where this run writes: the output root plus the budget (`d8`, or `full` for the unmodified depth)."""
        return self.out_dir / (f"d{self.budget.depth}" if self.budget.depth is not None else "full")
