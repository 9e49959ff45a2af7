"""Build everything `train.py` needs from a config: task registry, run directory, trainer, resume, exit codes.

Adding a task = one entry in `TASKS` (name -> config sections + module factory). The config of a task is the
shared sections (`task`, `data`, `trainer`, `run`) plus the task's own; `load_run_config` reads `task:` first and
then types the whole file against that task's dataclass (unknown keys and wrong types are errors naming the key).

Run directories: `<run.root>/<run.name>/<NNN>` (NNN = 000, 001, ...), created with `mkdir(exist_ok=False)`, so a new
run never writes into another run's directory. A run directory holds `config.yaml` (the resolved config),
`logs/` (TensorBoard + CSV), `checkpoints/` (`last.ckpt`, `step*.ckpt`, `on_exception.ckpt`) and `samples/`.
`--resume [RUN_DIR]` continues the newest readable checkpoint of RUN_DIR (default: the newest run of the config's
run.name) with the run's saved config plus any `--set` overrides.

Exit codes: 0 done; 2 bad config / bad input file (nothing written); 143 stopped by SIGTERM after writing
`checkpoints/on_exception.ckpt`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Sampler

from varianttrain.checkpoints import CheckpointError
from varianttrain.config_io import ConfigError, apply_overrides, from_dict, load_config, to_dict, to_yaml
from varianttrain.data.datamodule import ImageNetDataModule
from varianttrain.training.config import (
    Derived,
    PretrainRunConfig,
    SupernetRunConfig,
    TrainerConfig,
    derive,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_INPUT, EXIT_SIGTERM = 0, 2, 143
CHECKPOINT_DIR, CONFIG_FILE = "checkpoints", "config.yaml"


# ------------------------------------------------------------------------------------------------
# Task registry
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A trainable task: its top-level config class and a factory for its LightningModule.

    `config_cls()` returns the dataclass of the whole config file (imported lazily, so a task whose module does not
    exist yet fails only when selected). `build_module(cfg, run_dir, resuming)` returns the LightningModule;
    `callbacks(cfg)` any task-specific callbacks.
    """

    name: str
    config_cls: Callable[[], type]
    build_module: Callable[[Any, Path, bool], L.LightningModule]
    callbacks: Callable[[Any], list[L.Callback]] = lambda cfg: []


def _supernet_module(cfg: SupernetRunConfig, run_dir: Path, resuming: bool) -> L.LightningModule:
    from varianttrain.training.module import SupernetModule

    return SupernetModule(cfg, full_only=cfg.task == "pretrain", load_initial_weights=not resuming, run_dir=run_dir)


def _supernet_callbacks(cfg: SupernetRunConfig) -> list[L.Callback]:
    from varianttrain.training.callbacks import ProgressiveSubnetSchedule

    if cfg.task == "pretrain":
        return []
    return [ProgressiveSubnetSchedule(cfg.supernet.schedule, cfg.supernet.depth_choices, cfg.supernet.seed)]


def _task_config(module: str, section: str, cls_name: str) -> Callable[[], type]:
    """Config class of an externally implemented task: shared sections + `<section>: <cls_name>`."""

    def build() -> type:
        import importlib

        try:
            mod = importlib.import_module(module)
            section_cls = getattr(mod, cls_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"task {section!r} is not available: {module}.{cls_name} could not be imported "
                              f"({err}); it is implemented in {module.replace('.', '/')}.py", key="task") from err
        return _compose_config(f"{cls_name}Run", section, section_cls)

    return build


def _task_module(module: str, cls_name: str, section: str) -> Callable[[Any, Path, bool], L.LightningModule]:
    def build(cfg: Any, run_dir: Path, resuming: bool) -> L.LightningModule:
        import importlib

        return getattr(importlib.import_module(module), cls_name)(getattr(cfg, section))

    return build


def _compose_config(name: str, section: str, section_cls: type) -> type:
    from varianttrain.data.config import DataConfig
    from varianttrain.training.config import RunDirConfig

    fields = [("task", str, dataclasses.field(default=section)),
              ("data", DataConfig, dataclasses.field(default_factory=DataConfig)),
              ("trainer", TrainerConfig, dataclasses.field(default_factory=TrainerConfig)),
              ("run", RunDirConfig, dataclasses.field(default_factory=lambda: RunDirConfig(name=section))),
              (section, section_cls, dataclasses.field(default_factory=section_cls))]
    return dataclasses.make_dataclass(name, fields, frozen=True)


TASKS: dict[str, TaskSpec] = {
    "supernet": TaskSpec("supernet", lambda: SupernetRunConfig, _supernet_module, _supernet_callbacks),
    "pretrain": TaskSpec("pretrain", lambda: PretrainRunConfig, _supernet_module, _supernet_callbacks),
    # ---- tasks implemented by other modules (imported only when selected) ----
    "tokenizer": TaskSpec("tokenizer", _task_config("varianttrain.training.tokenizer_module", "tokenizer",
                                                    "TokenizerTaskConfig"),
                          _task_module("varianttrain.training.tokenizer_module", "TokenizerModule", "tokenizer")),
    "classifier": TaskSpec("classifier", _task_config("varianttrain.training.classifier_module", "classifier",
                                                      "ClassifierTaskConfig"),
                           _task_module("varianttrain.training.classifier_module", "ClassifierModule", "classifier")),
}


def _task_name(path: str | Path, overrides: Sequence[str]) -> str:
    """The `task:` of a config file (after overrides); malformed files are reported by load_config later."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        data = apply_overrides(data, overrides)
    except Exception:  # noqa: BLE001 - the typed load below produces the precise error
        return "supernet"
    task = data.get("task", "supernet") if isinstance(data, dict) else "supernet"
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r}; choose one of {sorted(TASKS)}", key="task", source=str(path))
    return task


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> tuple[TaskSpec, Any]:
    """(task spec, typed config) for a config file and `--set key=value` overrides."""
    spec = TASKS[_task_name(path, overrides)]
    return spec, load_config(spec.config_cls(), path, overrides)


# ------------------------------------------------------------------------------------------------
# Run directories and checkpoints
# ------------------------------------------------------------------------------------------------


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create `<root>/<name>/<NNN>` with the next free index; never reuses an existing directory."""
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()]
    index = max(existing, default=-1) + 1
    while True:
        run_dir = base / f"{index:03d}"
        try:
            run_dir.mkdir(exist_ok=False)  # atomic: two runs started together get different directories
            return run_dir
        except FileExistsError:
            index += 1


def latest_run_dir(root: str | Path, name: str) -> Path:
    """The newest existing run of `<root>/<name>` (for `--resume` without a directory)."""
    base = Path(root) / name
    runs = sorted((p for p in base.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
        if base.is_dir() else []
    if not runs:
        raise CheckpointError(f"--resume: no run directory under {base}; start a run without --resume first")
    return runs[-1]


def resume_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run (a file cut short by SIGKILL is not a valid zip and is skipped)."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    files = [p for p in ckpt_dir.glob("*.ckpt") if p.is_file()] if ckpt_dir.is_dir() else []
    for path in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True):
        if zipfile.is_zipfile(path):
            return path
        log.warning("skipping incomplete checkpoint %s", path)
    raise CheckpointError(f"--resume: {ckpt_dir} holds no complete checkpoint (*.ckpt); nothing to resume")


# ------------------------------------------------------------------------------------------------
# Data: deterministic, resumable map-style loaders
# ------------------------------------------------------------------------------------------------


class EpochPermutationSampler(Sampler[int]):
    """This rank's share of a permutation seeded by (seed, epoch): the same order however often a run resumes.

    Every rank gets len // world indices (the tail is dropped so all ranks run the same number of steps). `skip`
    leaves out the first indices of the next iteration (mid-epoch resume).
    """

    def __init__(self, size: int, seed: int, rank: int, world_size: int, shuffle: bool = True):
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, seed, rank, world_size, shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size // self.world_size

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size) if self.shuffle \
            else np.arange(self.size)
        mine = order[: len(self) * self.world_size][self.rank::self.world_size]
        skip, self.skip = self.skip, 0
        yield from (int(i) for i in mine[skip:])


class ResumableDataLoader(DataLoader):
    """DataLoader whose state (epoch, batches consumed) is saved in Lightning checkpoints (`_Stateful`).

    The consumed count is Lightning's own batch progress at save time (not the loader's, which runs ahead by the
    prefetched batches); on resume the sampler skips exactly those batches of that epoch.
    """

    def __init__(self, *args, progress_fn: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(*args, **kwargs)
        self.progress_fn = progress_fn

    def state_dict(self) -> dict:
        epoch, consumed = self.progress_fn()
        return {"epoch": epoch, "consumed_batches": consumed}

    def load_state_dict(self, state: dict) -> None:
        sampler: EpochPermutationSampler = self.sampler
        consumed = int(state.get("consumed_batches", 0))
        if 0 < consumed < len(self):
            sampler.set_epoch(int(state["epoch"]))
            sampler.skip = consumed * self.batch_size


class RunDataModule(ImageNetDataModule):
    """The data layer's module with deterministic, resumable map-style loaders ('indices' / 'imagefolder').

    The data layer's map loaders shuffle with one generator over the run, so the order of epoch e depends on how
    many epochs this process has seen; here it is a function of (seed, epoch) and resumable mid-epoch. Webdataset
    loaders are used unchanged (their order is a function of (seed, epoch); a mid-epoch resume restarts the epoch's
    stream, which Lightning warns about).
    """

    def _map_loader(self, split: str) -> DataLoader:
        if split not in self._datasets:
            self.setup()
        cfg = self.cfg
        train = split == "train"
        rank, world = self.rank_world()
        dataset = self._datasets[split]
        sampler = EpochPermutationSampler(len(dataset), cfg.seed, rank, world, shuffle=train)
        workers_kw = {}
        if cfg.num_workers > 0:
            workers_kw = dict(persistent_workers=cfg.persistent_workers, prefetch_factor=cfg.prefetch_factor)
        return ResumableDataLoader(dataset, batch_size=cfg.batch_size if train else cfg.effective_val_batch_size,
                                   sampler=sampler, drop_last=train, num_workers=cfg.num_workers,
                                   pin_memory=cfg.pin_memory and torch.cuda.is_available(),
                                   progress_fn=self._progress, **workers_kw)

    def _progress(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        return trainer.current_epoch, int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------


def _strategy(cfg: Any, uses_subnets: bool):
    tcfg: TrainerConfig = cfg.trainer
    if tcfg.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy
        from torch.distributed.fsdp import MixedPrecision

        from varianttrain.models.blocks import AdaLNBlock

        if getattr(getattr(cfg, "ema", None), "enabled", False):
            raise ConfigError("ema.enabled is not supported with trainer.strategy=fsdp (the EMA copy would need "
                              "sharding); use ddp or disable the EMA", key="ema.enabled")
        kw: dict = {}
        if tcfg.fsdp.fp32_params:
            kw["mixed_precision"] = MixedPrecision(param_dtype=torch.float32, reduce_dtype=torch.float32,
                                                   buffer_dtype=torch.float32)
        # Whole transformer blocks are the FSDP units (the AdaLN projection runs inside AdaLNBlock.forward during
        # training), matching the per-block activation checkpointing.
        return FSDPStrategy(auto_wrap_policy={AdaLNBlock},
                            sharding_strategy=tcfg.fsdp.sharding_strategy, state_dict_type=tcfg.fsdp.state_dict_type,
                            **kw)
    world = tcfg.devices * tcfg.num_nodes
    if tcfg.strategy == "ddp" or (tcfg.strategy == "auto" and world > 1):
        from lightning.pytorch.strategies import DDPStrategy

        find_unused = tcfg.find_unused_parameters
        if find_unused is None:
            # With a bridge zone every block runs on the bridge prefix, so every parameter gets a gradient.
            find_unused = uses_subnets and getattr(cfg.supernet, "bridge_scales", 1) == 0
        start = os.environ.get("VARIANTTRAIN_DDP_START_METHOD", "popen")  # tests use 'fork' (LIGHTNING.md §b)
        return DDPStrategy(find_unused_parameters=find_unused, start_method=start, gradient_as_bucket_view=True)
    return "auto"


def build_trainer(cfg: Any, spec: TaskSpec, run_dir: Path, derived: Derived,
                  extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Lightning Trainer: loggers, checkpoints, schedule callbacks, strategy, cadence."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, OnExceptionCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from varianttrain.training.callbacks import CpuThreads, StepSeed, SubnetAudit

    tcfg: TrainerConfig = cfg.trainer
    ckpt_dir = run_dir / CHECKPOINT_DIR
    callbacks: list[L.Callback] = [StepSeed(tcfg.seed), LearningRateMonitor(logging_interval="step"),
                                   OnExceptionCheckpoint(dirpath=ckpt_dir, filename="on_exception")]
    # Periodic step checkpoints, the newest `ckpt_keep` kept (monitor 'step' makes top-k mean "latest k").
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="step{step:07d}", auto_insert_metric_name=False,
                                     every_n_train_steps=tcfg.ckpt_every_n_steps or None, save_top_k=tcfg.ckpt_keep,
                                     monitor="step", mode="max", save_last=True, save_on_train_epoch_end=False,
                                     enable_version_counter=False)  # a resumed run must update last.ckpt itself
                     if tcfg.ckpt_every_n_steps else
                     ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, every_n_epochs=1,
                                     enable_version_counter=False))
    if tcfg.ckpt_every_n_steps and tcfg.ckpt_at_epoch_end:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="epoch_end", save_top_k=1, every_n_epochs=1,
                                         save_on_train_epoch_end=True, enable_version_counter=False))
    if tcfg.ckpt_every_minutes:
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="timed", save_top_k=1, enable_version_counter=False,
                                         train_time_interval=timedelta(minutes=tcfg.ckpt_every_minutes)))
    if tcfg.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=tcfg.progress_refresh))
    callbacks += list(spec.callbacks(cfg))
    # After the schedule (callbacks run in list order), so the audit sees this micro-batch's subnet.
    if tcfg.audit_subnets:
        callbacks.append(SubnetAudit(run_dir / "subnets"))
    if tcfg.cpu_threads:
        callbacks.append(CpuThreads(tcfg.cpu_threads))
    callbacks += list(extra_callbacks)

    vcfg = getattr(cfg, "validation", None)
    val_kw: dict = {"limit_val_batches": 0, "num_sanity_val_steps": 0}
    if vcfg is not None and vcfg.every_n_steps and cfg.data.val_path:
        # Lightning counts training *batches* for val_check_interval; one optimizer step = `accumulate` batches.
        val_kw = {"val_check_interval": vcfg.every_n_steps * derived.accumulate, "check_val_every_n_epoch": None,
                  "limit_val_batches": vcfg.num_batches, "num_sanity_val_steps": 0}
    uses_subnets = cfg.task == "supernet"
    # Lightning's CSV logger rewrites metrics.csv when it finds one: a resumed run logs to csv_resume<k>/ instead.
    previous = [p for p in (run_dir / "logs").glob("csv*") if p.is_dir()] if (run_dir / "logs").is_dir() else []
    csv_version = "csv" if not previous else f"csv_resume{len(previous)}"
    loggers = [TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False),
               CSVLogger(run_dir, name="logs", version=csv_version)]
    torch.set_float32_matmul_precision(tcfg.matmul_precision)
    return L.Trainer(
        accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=tcfg.num_nodes,
        strategy=_strategy(cfg, uses_subnets), precision=tcfg.precision,
        accumulate_grad_batches=derived.accumulate, max_steps=tcfg.max_steps,
        max_epochs=tcfg.max_epochs if tcfg.max_epochs is not None else -1,
        log_every_n_steps=tcfg.log_every_n_steps, callbacks=callbacks, logger=loggers,
        default_root_dir=run_dir, enable_progress_bar=tcfg.progress_bar, use_distributed_sampler=False,
        enable_model_summary=False, **val_kw)


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


def _resolve_resume(config_path: str | None, resume: str | bool, overrides: Sequence[str]) -> tuple[Path, list[str]]:
    if isinstance(resume, str) and resume:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"--resume {run_dir}: not a run directory (no {CONFIG_FILE})")
        return run_dir, list(overrides)
    if config_path is None:
        raise ConfigError("--resume without a run directory needs --config to find the run (run.root/run.name)")
    _, cfg = load_run_config(config_path, overrides)
    return latest_run_dir(cfg.run.root, cfg.run.name), list(overrides)


def run(config_path: str | None, overrides: Sequence[str] = (), resume: str | bool = False,
        extra_callbacks: Sequence[L.Callback] = ()) -> int:
    """Train; returns the process exit status (see the module docstring). `extra_callbacks`: for tests."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    rank_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    try:
        if resume:
            run_dir, overrides = _resolve_resume(config_path, resume, overrides)
            spec, cfg = load_run_config(run_dir / CONFIG_FILE, overrides)
            ckpt_path: str | None = str(resume_checkpoint(run_dir))
        else:
            if config_path is None:
                raise ConfigError("--config is required")
            spec, cfg = load_run_config(config_path, overrides)
            run_dir, ckpt_path = None, None
        derived = derive(cfg.trainer, cfg.data.batch_size)
        # Build the module before creating anything on disk: bad checkpoints fail here with nothing written.
        L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        module = spec.build_module(cfg, run_dir or Path("."), bool(resume))
        if run_dir is None:
            run_dir = _claim_run_dir(cfg)
            if hasattr(module, "run_dir"):
                module.run_dir = run_dir
        elif overrides and rank_zero:
            (run_dir / f"config.resume-{len(list(run_dir.glob('config.resume-*.yaml')))}.yaml").write_text(
                to_yaml(cfg))
        datamodule = RunDataModule(cfg.data)
        trainer = build_trainer(cfg, spec, run_dir, derived, extra_callbacks)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        log.error("%s", err)
        print(f"error: {err}", flush=True)
        return EXIT_BAD_INPUT
    log.info("run directory %s (global batch %d = %d per device x %d accumulation x %d devices)", run_dir,
             derived.global_batch, derived.per_device_batch, derived.accumulate, derived.world_size)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        print(f"stopped by SIGTERM; checkpoint in {run_dir / CHECKPOINT_DIR}", flush=True)
        return EXIT_SIGTERM
    finally:
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            os.environ.pop("VARIANTTRAIN_RUN_DIR", None)  # in-process callers (tests) start fresh runs next time
    return EXIT_OK


def _external_launch() -> tuple[int, str] | None:
    """(global rank, job id) when torchrun or SLURM started every rank (Lightning then launches nothing)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ:
        return int(os.environ["RANK"]), os.environ["TORCHELASTIC_RUN_ID"]
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"]), os.environ.get("SLURM_JOB_ID", "slurm")
    return None


def _claim_run_dir(cfg: Any) -> Path:
    """Create the run directory once per run, whatever started the ranks.

    * Lightning's own launcher (`trainer.devices > 1` from one process): rank 0 creates `<root>/<name>/<NNN>` and
      passes it to the ranks it re-executes through VARIANTTRAIN_RUN_DIR.
    * torchrun / SLURM (every rank runs train.py): the directory is `<root>/<name>/job-<id>` (torchrun's
      --rdzv-id or SLURM_JOB_ID); global rank 0 creates it (an existing one is an error: use --resume), the other
      ranks wait for its config.yaml.
    """
    inherited = os.environ.get("VARIANTTRAIN_RUN_DIR")
    if inherited and int(os.environ.get("LOCAL_RANK", "0")) > 0:
        return Path(inherited)
    external = _external_launch()
    if external is not None:
        rank, job = external
        run_dir = Path(cfg.run.root) / cfg.run.name / f"job-{job}"
        if rank == 0:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                run_dir.mkdir(exist_ok=False)
            except FileExistsError as err:
                raise CheckpointError(f"run directory {run_dir} already exists (same job id); pass --resume "
                                      f"{run_dir} to continue it") from err
            (run_dir / CONFIG_FILE).write_text(to_yaml(cfg))
            return run_dir
        for _ in range(1200):  # up to 10 minutes for rank 0 to get there
            if (run_dir / CONFIG_FILE).is_file():
                return run_dir
            time.sleep(0.5)
        raise CheckpointError(f"rank {rank}: run directory {run_dir} was not created by rank 0")
    run_dir = new_run_dir(cfg.run.root, cfg.run.name)
    (run_dir / CONFIG_FILE).write_text(to_yaml(cfg))
    os.environ["VARIANTTRAIN_RUN_DIR"] = str(run_dir)  # inherited by the ranks Lightning's launcher starts
    return run_dir


def config_to_dict(cfg: Any) -> dict:
    """Plain-dict form of a run config (for checkpoints and exports)."""
    return to_dict(cfg)


def config_from_dict(data: dict) -> Any:
    """Typed run config from the dict saved in a checkpoint (`checkpoint['varianttrain']['config']`)."""
    task = data.get("task", "supernet")
    return from_dict(TASKS[task].config_cls(), data, where="checkpoint config")
