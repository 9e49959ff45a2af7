"""The task table of the training system: what `train.py` can run, and how a config file becomes a typed config.

A task is a `TaskSpec`: the dataclass of its whole config file and a factory for its LightningModule (plus any
callbacks of its own). The training system defines the supernet and pretrain tasks (`SUPERNET_TASKS`); other parts
of the project declare theirs with `section_task` (the demo's tokenizer and classifier, `varianttrain.demo.tasks`),
and the entry point passes the combined table (`varianttrain.tasks.TASKS`) to the runner. The training system never
imports those other tasks.

`load_run_config` reads `task:` first and then types the whole file against that task's dataclass (unknown keys and
wrong types are errors naming the key).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from varianttrain.config_io import ConfigError, apply_overrides, load_config
from varianttrain.data.config import DataConfig
from varianttrain.training.config import PretrainRunConfig, RunDirConfig, SupernetRunConfig, TrainerConfig


@dataclass(frozen=True)
class TaskSpec:
    """A trainable task: the dataclass of its config file and a factory for its LightningModule.

    `build_module(cfg, run_dir, resuming)` returns the LightningModule; `callbacks(cfg)` any task-specific callbacks.
    """

    name: str
    config_cls: type
    build_module: Callable[[Any, Path, bool], L.LightningModule]
    callbacks: Callable[[Any], list[L.Callback]] = lambda cfg: []


TaskTable = Mapping[str, TaskSpec]


def _supernet_module(cfg: SupernetRunConfig, run_dir: Path, resuming: bool) -> L.LightningModule:
    from varianttrain.training.module import SupernetModule

    return SupernetModule(cfg, full_only=cfg.task == "pretrain", load_initial_weights=not resuming, run_dir=run_dir)


def _supernet_callbacks(cfg: SupernetRunConfig) -> list[L.Callback]:
    from varianttrain.training.callbacks import ProgressiveSubnetSchedule

    if cfg.task == "pretrain":
        return []
    return [ProgressiveSubnetSchedule(cfg.supernet.schedule, cfg.supernet.depth_choices, cfg.supernet.seed)]


SUPERNET_TASKS: dict[str, TaskSpec] = {
    "supernet": TaskSpec("supernet", SupernetRunConfig, _supernet_module, _supernet_callbacks),
    "pretrain": TaskSpec("pretrain", PretrainRunConfig, _supernet_module, _supernet_callbacks),
}


def section_task(name: str, section_cls: type, build: Callable[[Any], L.LightningModule]) -> TaskSpec:
    """A task whose config file is the shared sections (`task`, `data`, `trainer`, `run`) plus one section `name`
    typed by `section_cls`; its module is `build(<that section>)`."""
    fields = [("task", str, dataclasses.field(default=name)),
              ("data", DataConfig, dataclasses.field(default_factory=DataConfig)),
              ("trainer", TrainerConfig, dataclasses.field(default_factory=TrainerConfig)),
              ("run", RunDirConfig, dataclasses.field(default_factory=lambda: RunDirConfig(name=name))),
              (name, section_cls, dataclasses.field(default_factory=section_cls))]
    config_cls = dataclasses.make_dataclass(f"{section_cls.__name__}Run", fields, frozen=True)
    return TaskSpec(name, config_cls, lambda cfg, run_dir, resuming: build(getattr(cfg, name)))


def _task_name(path: str | Path, overrides: Sequence[str], tasks: TaskTable) -> str:
    """The `task:` of a config file (after overrides); malformed files are reported by load_config later."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        data = apply_overrides(data, overrides)
    except Exception:  # noqa: BLE001 - the typed load below produces the precise error
        return "supernet"
    task = data.get("task", "supernet") if isinstance(data, dict) else "supernet"
    if not isinstance(task, str) or task not in tasks:
        raise ConfigError(f"task: unknown task {task!r}; choose one of {sorted(tasks)}", key="task", source=str(path))
    return task


def load_run_config(path: str | Path, overrides: Sequence[str] = (),
                    tasks: TaskTable = SUPERNET_TASKS) -> tuple[TaskSpec, Any]:
    """(task spec, typed config) for a config file and `--set key=value` overrides; `tasks`: the task table (train.py
    passes every task of the project, `varianttrain.tasks.TASKS`)."""
    spec = tasks[_task_name(path, overrides, tasks)]
    return spec, load_config(spec.config_cls, path, overrides)
