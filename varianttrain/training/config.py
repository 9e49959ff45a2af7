"""The run config of `train.py`: nested frozen dataclasses read from YAML by `varianttrain.config_io`.

Sections shared by every task: `task`, `data` (the data layer's `DataConfig`), `trainer`, `run`. The supernet and
pretrain tasks add `model`, `supernet`, `optim`, `ema` and `validation`; other tasks bring their own section (the
task table, `varianttrain.training.tasks`). Values that follow from others (per-device batch, accumulation, world size,
the VAR architecture) are computed by `derive()` and never written back into the user's config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from varianttrain.config_io import ConfigError, from_dict
from varianttrain.data.config import DataConfig
from varianttrain.models.depth_plan import SubsetRule
from varianttrain.models.var import RELEASED_PATCH_NUMS, VARConfig
from varianttrain.models.vqvae import VQVAEConfig
from varianttrain.sampling.config import SAMPLING_PROTOCOLS, SamplingProtocol

InitMode = Literal["pretrained", "checkpoint", "scratch"]
# Lightning precision settings this project runs with ('32' is Lightning's alias of '32-true').
Precision = Literal["32-true", "32", "bf16-mixed", "16-mixed", "bf16-true"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class ModelConfig:
    """The VAR being trained and the frozen VQVAE tokenizer."""

    depth: int = 30  # number of transformer blocks D
    embed_dim: int | None = None  # width C; None = 64 * depth (the released family)
    num_heads: int | None = None  # None = depth (head dim 64)
    patch_nums: tuple[int, ...] = RELEASED_PATCH_NUMS  # token pyramid; must equal vqvae.patch_nums
    num_classes: int = 1000
    drop_path_rate: float | None = None  # rate of the last block; None = official 0.1 * depth / 24
    cond_drop_rate: float = 0.1  # label dropout for classifier-free guidance
    # 'pretrained': the released var_d30.pth; 'checkpoint': any project checkpoint/export (init_from_ema picks its
    # EMA weights); 'scratch': VAR.init_weights with the official init (docs/REFERENCES.md B15).
    init: InitMode = "pretrained"
    var_checkpoint: str | None = "checkpoints/var_d30.pth"
    init_from_ema: bool = False  # init 'checkpoint' only: take the EMA weights of a training checkpoint
    init_adaln: float = 0.5  # scratch init only (official --aln)
    init_adaln_gamma: float = 1e-5  # scratch init only (official --alng; d16/d20: 1e-3, d24: 1e-4, d30: 1e-5)
    init_head: float = 0.02  # scratch init only (official --hd)
    # The released tokenizer; null = random weights (smoke tests only: tokens then carry no image semantics).
    vqvae_checkpoint: str | None = "checkpoints/vae_ch160v4096z32.pth"
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    gradient_checkpointing: bool = False  # recompute each block in backward (per-block activation checkpointing)
    label_smoothing: float = 0.0  # official --ls (0 in every README command)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"model.depth must be >= 1, got {self.depth}")
        if tuple(self.patch_nums) != tuple(self.vqvae.patch_nums):
            raise ValueError(f"model.patch_nums {list(self.patch_nums)} must equal model.vqvae.patch_nums "
                             f"{list(self.vqvae.patch_nums)} (the VQVAE tokenises exactly the VAR pyramid)")
        if self.init in ("pretrained", "checkpoint") and not self.var_checkpoint:
            raise ValueError(f"model.init={self.init!r} needs model.var_checkpoint (a .pth/.ckpt/.safetensors path)")
        if self.init_from_ema and self.init != "checkpoint":
            raise ValueError("model.init_from_ema only applies to model.init='checkpoint'")

    def var_config(self) -> VARConfig:
        """The VAR architecture (the official family for this depth unless width/heads are given)."""
        overrides: dict = dict(num_classes=self.num_classes, vocab_size=self.vqvae.vocab_size,
                               z_channels=self.vqvae.z_channels, patch_nums=tuple(self.patch_nums),
                               cond_drop_rate=self.cond_drop_rate)
        if self.embed_dim is not None:
            overrides["embed_dim"] = self.embed_dim
        if self.num_heads is not None:
            overrides["num_heads"] = self.num_heads
        if self.drop_path_rate is not None:
            overrides["drop_path_rate"] = self.drop_path_rate
        return VARConfig.for_depth(self.depth, **overrides)


@dataclass(frozen=True)
class PretrainModelConfig(ModelConfig):
    """`task: pretrain` trains from scratch by default (official recipe)."""

    init: InitMode = "scratch"
    var_checkpoint: str | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    """How the subnet probability p evolves (VARiant's dynamic ratio, [VARiant]).

    Phase 3 (p = p_end) has no length of its own: it runs from phase1 + phase2 until training stops, so its length
    is the training length (trainer.max_epochs or trainer.max_steps) minus phase1 + phase2. One number, one place.
    """

    mode: Literal["progressive", "fixed"] = "progressive"
    unit: Literal["epochs", "steps"] = "epochs"  # unit of the phase lengths (epochs may be fractional)
    phase1: float = 5.0  # joint training at p = p_start
    phase2: float = 15.0  # linear ramp p_start -> p_end; then phase 3 at p_end until training stops
    p_start: float = 0.2  # ratio subnet:full = 2:8
    p_end: float = 1.0  # 10:0
    fixed_ratio: float = 0.2  # mode 'fixed': constant p (the paper's ablation: 0.1 or 1.0)

    # Read by config_io: a config that still sets a removed key gets this explanation instead of "unknown key".
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "phase3": "phase 3 lasts from phase1 + phase2 until training stops; its length is set by trainer.max_epochs "
                  "(or trainer.max_steps for unit 'steps'). Delete the key and set the training length to "
                  "phase1 + phase2 + the phase-3 length you want"}

    def __post_init__(self) -> None:
        for name in ("phase1", "phase2"):
            if getattr(self, name) < 0:
                raise ValueError(f"supernet.schedule.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("p_start", "p_end", "fixed_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"supernet.schedule.{name} must lie in [0, 1], got {getattr(self, name)}")


@dataclass(frozen=True)
class SupernetConfig:
    """Elastic depth: which subnets exist and how often they are trained."""

    depth_choices: tuple[int, ...] = (16, 8, 4, 2)  # subnet depths d, drawn uniformly on a subnet step
    bridge_scales: int = 6  # N: the first N scales always run every block (the bridge zone)
    subset_rule: SubsetRule = "nested"  # see docs/DESIGN.md (equidistant = paper formula)
    seed: int = 0  # the subnet choice of step t is a pure function of (seed, t)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)

    def __post_init__(self) -> None:
        if not self.depth_choices:
            raise ValueError("supernet.depth_choices must not be empty")
        if len(set(self.depth_choices)) != len(self.depth_choices) or min(self.depth_choices) < 1:
            raise ValueError(f"supernet.depth_choices must be distinct positive depths, got {self.depth_choices}")
        if self.bridge_scales < 0:
            raise ValueError(f"supernet.bridge_scales must be >= 0, got {self.bridge_scales}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with VAR's parameter groups (docs/REFERENCES.md B18); defaults are VARiant's fine-tuning settings."""

    lr: float = 1e-6  # peak learning rate (VARiant: 1e-6 at global batch 1024; not rescaled by batch size)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05  # on matrices only; norms, biases, embeddings/positions and scale_mul get none
    weight_decay_end: float | None = None  # cosine from weight_decay to this (official d30: 0.05 -> 0.08)
    grad_clip: float = 2.0  # global L2 norm (official --tclip); 0 disables
    schedule: Literal["constant", "lin0", "cosine"] = "constant"  # lin0 = official warmup, 5% flat, linear decay
    warmup_steps: int = 0  # optimizer steps of linear warmup from warmup_start_factor * lr
    warmup_start_factor: float = 0.005  # official wp0
    end_factor: float = 0.01  # lr factor at the end of lin0/cosine (official wpe)
    fused: bool | None = None  # fused AdamW kernel; None = on CUDA only

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("optim.warmup_steps, optim.grad_clip and optim.weight_decay must be >= 0")


@dataclass(frozen=True)
class EMAConfig:
    """Exponential moving average of the VAR weights (timm's ModelEmaV3), saved under `ema.module.`."""

    enabled: bool = False
    decay: float = 0.9999
    update_after_step: int = 0  # optimizer steps before the EMA starts tracking (it copies the weights until then)
    use_warmup: bool = False  # timm's decay warmup 1 - (1 + t)^-2/3
    cpu: bool = False  # keep the EMA copy in host memory (saves 8 GB of GPU memory for d30, slower)

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must lie in [0, 1), got {self.decay}")


@dataclass(frozen=True)
class FSDPConfig:
    """Used when trainer.strategy = 'fsdp' (GPU only)."""

    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD"] = "FULL_SHARD"
    state_dict_type: Literal["full", "sharded"] = "full"  # full = one .ckpt file (gathered on rank 0)
    fp32_params: bool = True  # keep fp32 params/reductions inside autocast (VAR's fp32 islands, docs/REFERENCES.md B17)


@dataclass(frozen=True)
class TrainerConfig:
    """Lightning Trainer settings, checkpoint cadence and the batch arithmetic."""

    accelerator: str = "auto"  # 'cpu', 'gpu', 'auto'
    devices: int = 1  # per node
    num_nodes: int = 1
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    precision: Precision = "32-true"
    # Global batch = data.batch_size (per device) x accumulation x devices x num_nodes. Give global_batch_size to
    # derive the accumulation, or accumulate_grad_batches directly (not both).
    global_batch_size: int | None = None
    accumulate_grad_batches: int | None = None
    max_steps: int = -1  # optimizer steps; -1 = use max_epochs
    max_epochs: int | None = None
    seed: int = 0  # seed_everything; also the per-step RNG reseed (exact resume)
    log_every_n_steps: int = 50
    ckpt_every_n_steps: int = 1000  # periodic checkpoints step{N}.ckpt (0 = only last.ckpt at epoch ends)
    ckpt_keep: int = 3  # periodic checkpoints kept (-1 = all); last.ckpt is always kept
    ckpt_every_minutes: float | None = 30.0  # wall-clock safety checkpoint (last.ckpt), None = off
    ckpt_at_epoch_end: bool = True  # also write last.ckpt at every epoch end
    find_unused_parameters: bool | None = None  # DDP; None = only when a subnet can skip a block entirely
    matmul_precision: Literal["highest", "high", "medium"] = "high"  # TF32 on Ampere+ (VAR default)
    progress_bar: bool = True
    progress_refresh: int = 20  # batches between progress-bar updates (keep logs small on clusters)
    cpu_threads: int | None = None  # torch intra-op threads per process, set by train.py (None = torch's default)
    audit_subnets: bool = False  # write <run>/subnets/rank<R>.jsonl: (step, p, depth) of every micro-batch
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)

    def __post_init__(self) -> None:
        if self.devices < 1 or self.num_nodes < 1:
            raise ValueError("trainer.devices and trainer.num_nodes must be >= 1")
        if self.global_batch_size is not None and self.accumulate_grad_batches is not None:
            raise ValueError("give trainer.global_batch_size or trainer.accumulate_grad_batches, not both")
        if self.max_steps < 1 and self.max_epochs is None and self.max_steps != -1:
            raise ValueError(f"trainer.max_steps must be >= 1 or -1, got {self.max_steps}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")


@dataclass(frozen=True)
class RunDirConfig:
    """Where runs live: <root>/<name>/<NNN>; a new run never reuses a directory."""

    root: str = "runs"
    name: str = "supernet_d30"


ValidationWeights = Literal["ema", "raw", "both"]


@dataclass(frozen=True)
class ValidationConfig:
    """Held-out loss/accuracy for the full network and every subnet, plus a sample grid per depth."""

    every_n_steps: int = 1000  # 0 = no validation during training
    num_batches: int = 20  # validation batches per rank per evaluation
    sample_classes: tuple[int, ...] = (207, 360, 387, 974, 88, 979, 417, 279)  # one grid column per class
    samples_per_class: int = 1
    sample_seed: int = 0
    sampling_protocol: SamplingProtocol = "code"  # 'official' (top-k 900) or 'code' (CoDe/VARiant: top-k 600, T 1.1)
    sample_every_n_validations: int = 1  # sample grids are slow on big models; 0 = never
    # Which weights validation losses and sample grids report: 'ema' (what an --ema export ships), 'raw', or
    # 'both' (EMA under val/..., raw under val_raw/...); None = 'ema' when ema.enabled, else 'raw'.
    weights: ValidationWeights | None = None

    def __post_init__(self) -> None:
        if self.every_n_steps < 0 or self.num_batches < 0:
            raise ValueError("validation.every_n_steps and validation.num_batches must be >= 0")
        if self.sample_every_n_validations and (not self.sample_classes or self.samples_per_class < 1):
            raise ValueError("validation.sample_classes must not be empty and validation.samples_per_class must be "
                             ">= 1 (set validation.sample_every_n_validations: 0 for no sample grids)")
        # YAML is checked against the Literal by config_io; this catches configs built in code, before training.
        if self.sampling_protocol not in SAMPLING_PROTOCOLS:
            raise ValueError(f"validation.sampling_protocol must be one of {', '.join(SAMPLING_PROTOCOLS)}, "
                             f"got {self.sampling_protocol!r}")


@dataclass(frozen=True)
class SupernetRunConfig:
    """Top-level config of the `supernet` and `pretrain` tasks."""

    task: str = "supernet"
    model: ModelConfig = field(default_factory=ModelConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunDirConfig = field(default_factory=RunDirConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        if self.validation.weights in ("ema", "both") and not self.ema.enabled:
            raise ValueError(f"validation.weights={self.validation.weights!r} needs EMA weights, but ema.enabled is "
                             "false; enable the EMA or validate the raw weights (validation.weights: raw)")
        depth = self.model.depth
        too_deep = [d for d in self.supernet.depth_choices if d > depth]
        if too_deep:
            raise ValueError(f"supernet.depth_choices {list(too_deep)} exceed model.depth={depth}")
        if self.supernet.bridge_scales > len(self.model.patch_nums):
            raise ValueError(f"supernet.bridge_scales={self.supernet.bridge_scales} exceeds the "
                             f"{len(self.model.patch_nums)} scales of model.patch_nums")
        num_classes = self.model.num_classes
        if self.data.num_classes > num_classes:  # label num_classes is the model's unconditional (CFG) class
            raise ValueError(f"data.num_classes={self.data.num_classes} exceeds model.num_classes={num_classes}: "
                             f"labels >= {num_classes} have no class embedding; make them equal")
        outside = [c for c in self.validation.sample_classes if not 0 <= c < num_classes]
        if outside:
            raise ValueError(f"validation.sample_classes {outside} are not classes of the model "
                             f"(model.num_classes={num_classes}); use labels in 0..{num_classes - 1}")
        side = self.model.vqvae.image_size
        if self.data.resolution != side:
            raise ValueError(f"data.resolution={self.data.resolution} must be the tokenizer's input size {side} "
                             f"({self.model.vqvae.downsample} x the last patch_num {self.model.patch_nums[-1]})")


@dataclass(frozen=True)
class PretrainRunConfig(SupernetRunConfig):
    """`task: pretrain`: the same module with p = 0 (full network only), initialised from scratch."""

    task: str = "pretrain"
    model: ModelConfig = field(default_factory=PretrainModelConfig)


def run_config_from_dict(data: Mapping[str, Any]) -> SupernetRunConfig:
    """Typed config of a supernet / pretrain run from the dict its checkpoints store
    (`checkpoint['varianttrain']['config']`, written by `SupernetModule`)."""
    task = data.get("task", "supernet")
    classes = {"supernet": SupernetRunConfig, "pretrain": PretrainRunConfig}
    if task not in classes:
        raise ConfigError(f"task {task!r}: only supernet / pretrain runs hold a VAR run config", key="task",
                          source="checkpoint config")
    return from_dict(classes[task], data, where="checkpoint config")


@dataclass(frozen=True)
class Derived:
    """Values computed from a config (never stored back into it)."""

    world_size: int  # devices x num_nodes
    per_device_batch: int
    accumulate: int
    global_batch: int


def derive(trainer: TrainerConfig, per_device_batch: int) -> Derived:
    """World size, accumulation and global batch from the trainer section and the per-device batch."""
    world = trainer.devices * trainer.num_nodes
    if trainer.max_steps == -1 and trainer.max_epochs is None:
        raise ConfigError("set trainer.max_steps or trainer.max_epochs (the training length)", key="trainer.max_steps")
    if trainer.global_batch_size is not None:
        per_step = per_device_batch * world
        if trainer.global_batch_size % per_step:
            raise ConfigError(f"trainer.global_batch_size={trainer.global_batch_size} is not a multiple of "
                              f"data.batch_size ({per_device_batch}) x devices x num_nodes ({world}) = {per_step}",
                              key="trainer.global_batch_size")
        accumulate = trainer.global_batch_size // per_step
    else:
        accumulate = trainer.accumulate_grad_batches or 1
    if accumulate < 1:
        raise ConfigError("trainer.accumulate_grad_batches must be >= 1", key="trainer.accumulate_grad_batches")
    return Derived(world_size=world, per_device_batch=per_device_batch, accumulate=accumulate,
                   global_batch=per_device_batch * accumulate * world)


def replace(obj, **changes):
    """`dataclasses.replace` re-exported for callers that adjust configs in code (tests, benchmarks)."""
    return dataclasses.replace(obj, **changes)
