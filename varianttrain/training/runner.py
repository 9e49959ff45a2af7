"""Build everything `train.py` needs from a config: run directory, trainer, resume, exit codes.

The task (what module is trained, with which config sections) comes from the task table passed to `run`
(`varianttrain.training.tasks`; train.py passes every task of the project, `varianttrain.tasks.TASKS`).

Run directories: `<run.root>/<run.name>/<NNN>` (NNN = 000, 001, ...), created with `mkdir(exist_ok=False)`, so a new
run never writes into another run's directory. A run directory holds `config.yaml` (the resolved config),
`logs/` (TensorBoard + CSV), `checkpoints/` (`step*.ckpt`, `last.ckpt` -> the newest, `on_exception.ckpt`; see
`varianttrain.training.checkpointing`) and `samples/`. `--resume [RUN_DIR]` continues the newest checkpoint of
RUN_DIR that opens (default: the newest run of the config's run.name; `varianttrain.training.resume`) with the run's
saved config plus any `--set` overrides that leave the model as it was.

Before anything is built or written, every input is checked (`varianttrain.training.preflight`) and all problems
are reported at once; a run directory is locked by the process training into it.

Data: the data layer's `ImageNetDataModule` (deterministic, resumable map-style loaders; webdataset streams).
Threads: `trainer.cpu_threads` is a per-process setting, applied by the entry point (train.py), not here.

Exit codes: 0 done; 2 bad config / bad input file (nothing written); 143 stopped by SIGTERM after writing
`checkpoints/on_exception.ckpt`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from varianttrain.checkpoints import CheckpointError
from varianttrain.config_io import ConfigError, to_dict, to_yaml
from varianttrain.data.datamodule import ImageNetDataModule
from varianttrain.training.config import Derived, TrainerConfig, derive
from varianttrain.training.preflight import PreflightError, check_training_inputs
from varianttrain.training.resume import RunLock, choose_checkpoint, contradictions
from varianttrain.training.tasks import SUPERNET_TASKS, TaskSpec, TaskTable, load_run_config

log = logging.getLogger(__name__)

EXIT_OK, EXIT_BAD_INPUT, EXIT_SIGTERM = 0, 2, 143
CHECKPOINT_DIR, CONFIG_FILE = "checkpoints", "config.yaml"


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
    """The checkpoint `--resume` continues (the newest by optimizer step that opens; `resume.choose_checkpoint`)."""
    return choose_checkpoint(run_dir).path


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
        start = os.environ.get("VARIANTTRAIN_DDP_START_METHOD", "popen")  # tests use 'fork' (docs/REFERENCES.md L2)
        return DDPStrategy(find_unused_parameters=find_unused, start_method=start, gradient_as_bucket_view=True)
    return "auto"


def build_trainer(cfg: Any, spec: TaskSpec, run_dir: Path, derived: Derived,
                  extra_callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The Lightning Trainer: loggers, checkpoints, schedule callbacks, strategy, cadence."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from varianttrain.training.callbacks import StepProgressBar, StepSeed, SubnetAudit
    from varianttrain.training.checkpointing import CrashCheckpoint, RunCheckpoints, StartedFlag

    tcfg: TrainerConfig = cfg.trainer
    ckpt_dir = run_dir / CHECKPOINT_DIR
    started = StartedFlag()
    callbacks: list[L.Callback] = [started, StepSeed(tcfg.seed), LearningRateMonitor(logging_interval="step"),
                                   CrashCheckpoint(ckpt_dir, started),
                                   RunCheckpoints(ckpt_dir, tcfg.ckpt_every_n_steps, tcfg.ckpt_keep,
                                                  tcfg.ckpt_every_minutes, tcfg.ckpt_at_epoch_end)]
    if tcfg.progress_bar:
        callbacks.append(StepProgressBar(refresh_rate=tcfg.progress_refresh))
    callbacks += list(spec.callbacks(cfg))
    # After the schedule (callbacks run in list order), so the audit sees this micro-batch's subnet.
    if tcfg.audit_subnets:
        callbacks.append(SubnetAudit(run_dir / "subnets"))
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


def _resolve_resume(config_path: str | None, resume: str | bool, overrides: Sequence[str],
                    tasks: TaskTable) -> Path:
    if isinstance(resume, str) and resume:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise CheckpointError(f"--resume {run_dir}: not a run directory (no {CONFIG_FILE})")
        return run_dir
    if config_path is None:
        raise ConfigError("--resume without a run directory needs --config to find the run (run.root/run.name)")
    _, cfg = load_run_config(config_path, overrides, tasks)
    return latest_run_dir(cfg.run.root, cfg.run.name)


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _warn_config_file_ignored(config_path: str | Path, run_dir: Path, cfg: Any, overrides: Sequence[str],
                              tasks: TaskTable) -> None:
    """A resumed run trains with its saved config (+ --set): say which values of the --config file that means
    ignoring, so an edit of the file (say trainer.max_steps) is not silently lost."""
    try:
        _, given = load_run_config(config_path, overrides, tasks)
    except (ConfigError, FileNotFoundError):
        return  # the file only located the run; its problems are not this run's
    saved, wanted = _flat(to_dict(cfg)), _flat(to_dict(given))
    differ = [f"{k} (run: {saved[k]!r}, file: {wanted[k]!r})" for k in sorted(saved)
              if k in wanted and saved[k] != wanted[k] and not k.startswith("run.")]
    if differ:
        log.warning("--resume trains with the run's saved config %s; these values of %s are not used: %s. Pass a "
                    "change with --set KEY=VALUE", run_dir / CONFIG_FILE, config_path, "; ".join(differ))


def resolve_run_config(config_path: str | Path | None, overrides: Sequence[str] = (), resume: str | bool = False,
                       tasks: TaskTable = SUPERNET_TASKS) -> tuple[TaskSpec, Any, Path | None]:
    """(task spec, typed config, run directory being resumed or None) of what `run` with these arguments trains.

    Raises ConfigError / CheckpointError / FileNotFoundError for a bad config or a missing run.
    """
    if resume:
        run_dir = _resolve_resume(config_path, resume, overrides, tasks)
        spec, cfg = load_run_config(run_dir / CONFIG_FILE, overrides, tasks)
        if config_path is not None:
            _warn_config_file_ignored(config_path, run_dir, cfg, overrides, tasks)
        return spec, cfg, run_dir
    if config_path is None:
        raise ConfigError("--config is required")
    spec, cfg = load_run_config(config_path, overrides, tasks)
    return spec, cfg, None


def run(config_path: str | Path | None, overrides: Sequence[str] = (), resume: str | bool = False,
        extra_callbacks: Sequence[L.Callback] = (), tasks: TaskTable = SUPERNET_TASKS) -> int:
    """Train; returns the process exit status (see the module docstring).

    `tasks`: the task table the config's `task:` is looked up in; `extra_callbacks`: for tests.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    rank_zero = int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    lock: RunLock | None = None
    try:
        spec, cfg, run_dir = resolve_run_config(config_path, overrides, resume, tasks)
        choice = None
        if run_dir is not None:
            if rank_zero:  # one process per run directory: a second --resume of the same run is refused
                lock = RunLock(run_dir)
                lock.acquire()
            choice = choose_checkpoint(run_dir, set_aside=rank_zero)
        problems = check_training_inputs(cfg, run_dir, choice.vqvae_sha256 if choice else None)
        if choice is not None and choice.saved_config is not None:
            found = contradictions(choice.saved_config, to_dict(cfg))
            problems += [f"{p}: a resumed run keeps its model; start a new run (model.init=checkpoint, "
                         f"model.var_checkpoint={choice.path}) to change it" for p in found]
        if problems:
            raise PreflightError(problems)
        if choice is not None:
            skipped = f" (skipped unreadable: {', '.join(choice.skipped)})" if choice.skipped else ""
            log.info("resuming %s from %s at optimizer step %d%s", run_dir, choice.path.name, choice.global_step,
                     skipped)
        derived = derive(cfg.trainer, cfg.data.batch_size)
        # Build the module before creating anything on disk: bad checkpoints fail here with nothing written.
        L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
        module = spec.build_module(cfg, run_dir or Path("."), bool(resume))
        if run_dir is None:
            run_dir = _claim_run_dir(cfg)
            if rank_zero:
                lock = RunLock(run_dir)
                lock.acquire()
            if hasattr(module, "run_dir"):
                module.run_dir = run_dir
        elif overrides and rank_zero:
            (run_dir / f"config.resume-{len(list(run_dir.glob('config.resume-*.yaml')))}.yaml").write_text(
                to_yaml(cfg))
        datamodule = ImageNetDataModule(cfg.data)
        trainer = build_trainer(cfg, spec, run_dir, derived, extra_callbacks)
    except (ConfigError, CheckpointError, FileNotFoundError, PreflightError) as err:
        if lock is not None:
            lock.release()
        message = str(err) if isinstance(err, PreflightError) else f"error: {err}"
        print(f"train.py: {message}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    log.info("run directory %s (global batch %d = %d per device x %d accumulation x %d devices)", run_dir,
             derived.global_batch, derived.per_device_batch, derived.accumulate, derived.world_size)
    try:
        # weights_only: a planted checkpoint must not run code, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says.
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(choice.path) if choice else None, weights_only=True)
    except SIGTERMException:
        print(f"stopped by SIGTERM; checkpoint in {run_dir / CHECKPOINT_DIR}", flush=True)
        return EXIT_SIGTERM
    finally:
        if lock is not None:
            lock.release()
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
