"""Tests for the generic config machinery (varianttrain.config_io): typing, errors, YAML round trip, overrides."""

from __future__ import annotations

import enum
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Optional

import pytest
import yaml

from varianttrain.config_io import (
    ConfigError,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    replace_path,
    to_dict,
    to_yaml,
)

# Example config tree, shaped like the project's run configs (varianttrain/training/config.py). Module level:
# string annotations (from __future__ import annotations) must be resolvable by typing.get_type_hints.


class Sampling(enum.Enum):
    UNIFORM = "uniform"
    PROGRESSIVE = "progressive"


@dataclass(frozen=True)
class ModelConfig:
    depth: int  # required: no default
    width: int = 64
    dropout: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 1000
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass(frozen=True)
class SupernetConfig:
    depth_choices: tuple[int, ...] = (30, 24, 16)
    sampling: Sampling = Sampling.UNIFORM
    distill_weights: dict[str, float] = field(default_factory=lambda: {"kl": 1.0})
    teacher_ckpt: Path | None = None

    def __post_init__(self) -> None:
        if not self.depth_choices:
            raise ValueError("depth_choices must not be empty")


@dataclass(frozen=True)
class TrainerConfig:
    devices: int = 1
    precision: Literal["bf16-mixed", "32-true"] = "bf16-mixed"
    compile: bool = False
    max_steps: int = 100
    run_dir: Path = Path("runs/default")
    tags: list[str] = field(default_factory=list)
    accumulate: Optional[int] = None  # noqa: UP045 - typing.Optional must keep working too
    name: str = "run"


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    supernet: SupernetConfig = field(default_factory=SupernetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    teacher: ModelConfig | None = None


@dataclass(frozen=True)
class ScheduleConfig:
    phase1: float = 5.0
    REMOVED_KEYS: ClassVar[dict[str, str]] = {"phase3": "phase 3 lasts until training stops; delete the key"}


def build(**sections) -> TrainConfig:
    """from_dict with a minimal valid mapping plus ``sections``."""
    return from_dict(TrainConfig, {"model": {"depth": 4}, **sections})


def error_of(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        build(**sections)
    return str(info.value)


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------------- building


def test_defaults_and_nested_values():
    cfg = build(optim={"lr": 3e-4}, supernet={"depth_choices": [16, 8], "sampling": "progressive"})
    assert cfg.model == ModelConfig(depth=4)
    assert cfg.optim.lr == 3e-4 and cfg.optim.warmup_steps == 1000
    assert cfg.supernet.depth_choices == (16, 8)
    assert cfg.supernet.sampling is Sampling.PROGRESSIVE
    assert cfg.trainer == TrainerConfig()


def test_unknown_key_top_level_names_key_suggestion_and_valid_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(TrainConfig, {"model": {"depth": 4}, "optm": {}}, where="configs/x.yaml")
    msg = str(info.value)
    assert msg.startswith("configs/x.yaml: ")
    assert "'optm'" in msg and "did you mean 'optim'?" in msg
    assert "model, optim, supernet, trainer, teacher" in msg
    assert info.value.key == "optm"


def test_unknown_key_nested_names_dotted_key_and_suggestion():
    msg = error_of(optim={"lrr": 1e-3})
    assert "unknown key 'optim.lrr'" in msg
    assert "did you mean 'optim.lr'?" in msg
    assert "valid keys in 'optim': lr, weight_decay, warmup_steps, betas" in msg


def test_several_unknown_keys_reported_together():
    msg = error_of(trainer={"devicez": 2, "zzz": 1})
    assert "'trainer.devicez' (did you mean 'trainer.devices'?)" in msg and "'trainer.zzz'" in msg


def test_missing_required_field():
    with pytest.raises(ConfigError, match=r"missing required field 'model'"):
        from_dict(TrainConfig, {})
    with pytest.raises(ConfigError, match=r"missing required field 'model\.depth'"):
        from_dict(TrainConfig, {"model": {"width": 8}})


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"optim": {"lr": "abc"}}, "optim.lr: expected float, got str 'abc'"),
        ({"optim": {"lr": True}}, "optim.lr: expected float, got bool True"),
        ({"optim": {"warmup_steps": 2.5}}, "optim.warmup_steps: expected int, got float 2.5"),
        ({"optim": {"warmup_steps": "1e-3"}}, "optim.warmup_steps: expected int, got str '1e-3'"),
        ({"optim": {"warmup_steps": None}}, "optim.warmup_steps: expected int, got null"),
        ({"trainer": {"name": 1.1}}, "trainer.name: expected str, got float 1.1 (quote the value"),
        ({"trainer": {"run_dir": 3}}, "trainer.run_dir: expected path (non-empty str), got int 3"),
        ({"trainer": {"run_dir": ""}}, "trainer.run_dir: expected path (non-empty str), got str ''"),
        ({"trainer": {"tags": "a"}}, "trainer.tags: expected a list (list[str]), got str 'a'"),
        ({"trainer": {"tags": ["a", 1]}}, "trainer.tags[1]: expected str, got int 1"),
        ({"supernet": {"depth_choices": 16}}, "supernet.depth_choices: expected a list (tuple[int, ...]), got int 16"),
        ({"supernet": {"depth_choices": [16, "x"]}}, "supernet.depth_choices[1]: expected int, got str 'x'"),
        ({"supernet": {"distill_weights": [1]}}, "supernet.distill_weights: expected a mapping (dict[str, float])"),
        ({"supernet": {"distill_weights": {"kl": "hi"}}}, "supernet.distill_weights.kl: expected float, got str 'hi'"),
        ({"optim": [1, 2]}, "optim: expected a mapping (OptimConfig), got list [1, 2]"),
    ],
)
def test_wrong_types(sections, expected):
    assert expected in error_of(**sections)


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None])
def test_bool_is_strict(value):
    assert f"trainer.compile: expected bool, got {'null' if value is None else type(value).__name__}" in error_of(
        trainer={"compile": value}
    )


def test_bool_accepts_yaml_booleans():
    assert build(trainer={"compile": True}).trainer.compile is True


def test_literal_accepts_allowed_and_lists_them():
    assert build(trainer={"precision": "32-true"}).trainer.precision == "32-true"
    msg = error_of(trainer={"precision": "bf16_mixed"})
    assert "trainer.precision: expected one of 'bf16-mixed', '32-true', got str 'bf16_mixed'" in msg
    assert "did you mean 'bf16-mixed'?" in msg


def test_enum_by_value_or_name_and_error_lists_values():
    assert build(supernet={"sampling": "UNIFORM"}).supernet.sampling is Sampling.UNIFORM
    msg = error_of(supernet={"sampling": "progresive"})
    assert "expected one of 'uniform', 'progressive' (Sampling)" in msg and "did you mean 'progressive'?" in msg


def test_optional_fields():
    assert build(trainer={"accumulate": None}).trainer.accumulate is None
    assert build(trainer={"accumulate": 4}).trainer.accumulate == 4
    assert "trainer.accumulate: expected int or null, got str 'x'" in error_of(trainer={"accumulate": "x"})
    assert build(supernet={"teacher_ckpt": "ckpt/t.pt"}).supernet.teacher_ckpt == Path("ckpt/t.pt")
    assert build(teacher={"depth": 30}).teacher == ModelConfig(depth=30)
    # Inside an optional section, errors keep their precise dotted key.
    assert "unknown key 'teacher.dept'" in error_of(teacher={"dept": 30})
    assert "teacher: expected a mapping (ModelConfig) or null, got int 3" in error_of(teacher=3)


def test_tuples_fixed_and_variadic():
    cfg = build(optim={"betas": [0.8, 1]}, supernet={"depth_choices": (8,)})
    assert cfg.optim.betas == (0.8, 1.0) and isinstance(cfg.optim.betas[1], float)
    assert cfg.supernet.depth_choices == (8,)
    assert "optim.betas: expected a list of 2 items (tuple[float, float]), got 3 items" in error_of(
        optim={"betas": [0.9, 0.95, 0.99]}
    )


def test_paths_from_str():
    cfg = build(trainer={"run_dir": "/tmp/runs/a"})
    assert cfg.trainer.run_dir == Path("/tmp/runs/a") and isinstance(cfg.trainer.run_dir, Path)


def test_numeric_coercions():
    cfg = build(optim={"lr": "1e-6", "weight_decay": 0, "warmup_steps": "3e5"}, trainer={"max_steps": 3.0e5})
    assert cfg.optim.lr == 1e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.0 and isinstance(cfg.optim.weight_decay, float)
    assert cfg.optim.warmup_steps == 300_000 and isinstance(cfg.optim.warmup_steps, int)
    assert cfg.trainer.max_steps == 300_000 and isinstance(cfg.trainer.max_steps, int)
    assert "got str 'inf'" in error_of(optim={"lr": "inf"})


def test_post_init_errors_become_config_errors_with_key():
    msg = error_of(supernet={"depth_choices": []})
    assert "invalid SupernetConfig at 'supernet': depth_choices must not be empty" in msg


def test_config_error_pickles_with_source():
    err = ConfigError("optim.lr: bad", key="optim.lr", source="cfg.yaml")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == "cfg.yaml: optim.lr: bad" and copy.key == "optim.lr"


# ------------------------------------------------------------------------------------------------- round trip


def test_to_yaml_round_trip_nested():
    cfg = build(
        optim={"lr": 1e-6, "betas": [0.5, 0.75]},
        supernet={"depth_choices": [16, 8], "sampling": "progressive", "teacher_ckpt": "ckpt/teacher.pt"},
        trainer={"precision": "32-true", "tags": ["a", "b c"], "accumulate": 2, "name": "1.10", "compile": True},
        teacher={"depth": 30, "width": 1920},
    )
    text = to_yaml(cfg)
    assert from_dict(TrainConfig, yaml.safe_load(text)) == cfg
    plain = to_dict(cfg)
    assert plain["supernet"]["depth_choices"] == [16, 8]
    assert plain["supernet"]["sampling"] == "progressive"
    assert plain["supernet"]["teacher_ckpt"] == "ckpt/teacher.pt"
    assert list(plain) == ["model", "optim", "supernet", "trainer", "teacher"]  # declaration order
    assert "depth_choices: [16, 8]" in text  # scalar lists inline, for readable saved configs
    assert "lr: 1.0e-06" in text  # floats keep a dot, so YAML 1.1 reads them back as floats


def test_to_dict_rejects_non_dataclass():
    with pytest.raises(TypeError):
        to_dict({"a": 1})


# -------------------------------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("optim.lr=1e-6", ("optim.lr", "1e-6")),  # YAML 1.1: a string, converted by the float field
        ("optim.lr=1.0e-6", ("optim.lr", 1e-6)),
        ("trainer.compile=true", ("trainer.compile", True)),
        ("supernet.depth_choices=[16,8]", ("supernet.depth_choices", [16, 8])),
        ("trainer.accumulate=null", ("trainer.accumulate", None)),
        ("trainer.name=a=b", ("trainer.name", "a=b")),
        (" trainer.devices = 2", ("trainer.devices", 2)),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["optim.lr", "=3", "optim..lr=3", "optim.=3"])
def test_parse_override_malformed(text):
    with pytest.raises(ConfigError, match="malformed override"):
        parse_override(text)


def test_parse_override_bad_yaml_value():
    with pytest.raises(ConfigError, match="cannot parse the value"):
        parse_override("supernet.depth_choices=[16, 8")


def test_apply_overrides_typed_results():
    raw = {"model": {"depth": 4}, "optim": {"lr": 0.1}}
    data = apply_overrides(raw, ["optim.lr=1e-6", "supernet.depth_choices=[16,8]", "trainer.devices=2"])
    assert raw == {"model": {"depth": 4}, "optim": {"lr": 0.1}}  # input untouched
    cfg = from_dict(TrainConfig, data)
    assert cfg.optim.lr == 1e-06 and isinstance(cfg.optim.lr, float)
    assert cfg.supernet.depth_choices == (16, 8)
    assert cfg.trainer.devices == 2


def test_apply_overrides_through_scalar_is_an_error():
    with pytest.raises(ConfigError, match=r"'optim' is float 0\.1, not a mapping"):
        apply_overrides({"optim": 0.1}, ["optim.lr=1"])


def test_apply_overrides_creates_optional_section_over_null():
    cfg = from_dict(TrainConfig, apply_overrides({"model": {"depth": 4}, "teacher": None}, ["teacher.depth=30"]))
    assert cfg.teacher == ModelConfig(depth=30)


# ------------------------------------------------------------------------------------------------------ files

EXAMPLE = """\
model:
  depth: 4
optim:
  lr: 1e-4        # YAML 1.1 reads this as a string; the float field converts it
supernet:
  depth_choices: [4, 2]
"""


def test_load_config_with_overrides(tmp_path):
    path = write(tmp_path, EXAMPLE)
    cfg = load_config(TrainConfig, path, overrides=["optim.lr=1e-6", "supernet.depth_choices=[16,8]"])
    assert cfg.optim.lr == 1e-06
    assert cfg.supernet.depth_choices == (16, 8)
    assert load_config(TrainConfig, str(path)).optim.lr == 1e-4


def test_load_config_unknown_override_key_names_the_override(tmp_path):
    path = write(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path, overrides=["optim.lrr=1e-6"])
    msg = str(info.value)
    assert msg.startswith(f"--set optim.lrr=1e-6 (config {path}): ")
    assert "unknown key 'optim.lrr' (did you mean 'optim.lr'?)" in msg


def test_load_config_type_error_from_override_and_from_file(tmp_path):
    path = write(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError, match=r"^--set trainer.compile=1 .*expected bool, got int 1"):
        load_config(TrainConfig, path, overrides=["trainer.compile=1"])
    bad = write(tmp_path, EXAMPLE + "trainer:\n  devices: two\n", "bad.yaml")
    with pytest.raises(ConfigError, match=rf"^{bad}: trainer.devices: expected int, got str 'two'"):
        load_config(TrainConfig, bad, overrides=["optim.lr=1"])


def test_load_config_post_init_error_mentions_overrides_inside_the_section(tmp_path):
    path = write(tmp_path, EXAMPLE)
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path, overrides=["supernet.depth_choices=[]", "optim.lr=1"])
    assert str(info.value).startswith(f"{path} with --set supernet.depth_choices=[]: invalid SupernetConfig")


def test_load_config_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(TrainConfig, write(tmp_path, EXAMPLE), overrides=["optim.lr"])


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=rf"config file '{missing}' not found"):
        load_config(TrainConfig, missing)
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(TrainConfig, tmp_path)


def test_load_config_yaml_syntax_error_has_line_number(tmp_path):
    path = write(tmp_path, "model:\n  depth: 4\noptim:\n  lr: [1, 2\n  weight_decay: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path)
    assert str(info.value).startswith(f"{path}:5:")
    assert "invalid YAML" in str(info.value)


def test_load_config_duplicate_key(tmp_path):
    path = write(tmp_path, "model:\n  depth: 4\n  width: 8\n  depth: 6\n")
    with pytest.raises(ConfigError, match=r":4:3: invalid YAML: duplicate key 'depth' \(first defined on line 2\)"):
        load_config(TrainConfig, path)


def test_load_config_merge_keys_still_allowed(tmp_path):
    text = "model: &m\n  depth: 4\n  width: 8\nteacher:\n  <<: *m\n  depth: 30\n"
    cfg = load_config(TrainConfig, write(tmp_path, text, "merge.yaml"))
    assert cfg.teacher == ModelConfig(depth=30, width=8)


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "just a string\n"])
def test_load_config_top_level_not_mapping(tmp_path, text):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(TrainConfig, write(tmp_path, text))


def test_load_config_empty_file_uses_defaults(tmp_path):
    cfg = load_config(TrainConfig, write(tmp_path, ""), overrides=["model.depth=2"])
    assert cfg == TrainConfig(model=ModelConfig(depth=2))


# ---------------------------------------------------------------------------------------------- replace_path


def test_replace_path_nested_frozen():
    cfg = build()
    new = replace_path(cfg, "optim.lr", 1)
    assert new.optim.lr == 1.0 and isinstance(new.optim.lr, float)
    assert cfg.optim.lr == 1e-4  # original untouched
    assert new.model is cfg.model  # untouched branches are shared
    assert replace_path(cfg, "supernet.depth_choices", [8, 4]).supernet.depth_choices == (8, 4)
    assert replace_path(cfg, "teacher", {"depth": 2}).teacher == ModelConfig(depth=2)


def test_removed_key_error_says_why_instead_of_guessing():
    with pytest.raises(ConfigError) as info:
        from_dict(ScheduleConfig, {"phase1": 2, "phase3": 4}, where="cfg.yaml")
    assert str(info.value) == "cfg.yaml: 'phase3' was removed: phase 3 lasts until training stops; delete the key"
    assert info.value.key == "phase3"
    with pytest.raises(ConfigError, match="'phase3' was removed: phase 3 lasts until"):
        replace_path(ScheduleConfig(), "phase3", 4)
    with pytest.raises(ConfigError, match=r"unknown key 'phase2' \(did you mean 'phase1'\?\)"):
        from_dict(ScheduleConfig, {"phase2": 4})  # keys never removed keep the usual message
    assert to_dict(ScheduleConfig()) == {"phase1": 5.0}  # the class attribute is not a config key


def test_replace_path_errors():
    cfg = build()
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)"):
        replace_path(cfg, "optim.lrr", 1.0)
    with pytest.raises(ConfigError, match="expected bool, got int 1"):
        replace_path(cfg, "trainer.compile", 1)
    with pytest.raises(ConfigError, match="'teacher' is null, not a config section"):
        replace_path(cfg, "teacher.depth", 3)
    with pytest.raises(ConfigError, match="depth_choices must not be empty"):
        replace_path(cfg, "supernet.depth_choices", [])
