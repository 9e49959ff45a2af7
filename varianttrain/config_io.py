"""Generic, typed config machinery: nested frozen dataclasses <-> YAML, with ``--set key=value`` overrides.

The concrete config classes live with the subsystems that own them (``ModelConfig`` in the model package,
``OptimConfig`` next to the optimizer, ...) and are composed into a top-level class elsewhere. This module only
knows how to build *any* such dataclass tree from a mapping, check it against the field annotations, and turn it
back into YAML. Unknown keys and type mismatches are errors: a typo must not silently change nothing.

Typical use (``train.py``)::

    cfg = load_config(TrainConfig, args.config, overrides=args.set)   # --set optim.lr=1e-4 --set trainer.devices=2
    (run_dir / "config.yaml").write_text(to_yaml(cfg))

Supported field annotations: ``int``, ``float``, ``bool``, ``str``, ``pathlib.Path``, ``Optional[X]`` /
``X | None`` (and other unions), ``Literal[...]``, ``Enum`` subclasses, ``tuple[X, ...]``, ``tuple[X, Y]``,
``list[X]``, ``dict[str, X]`` / ``Mapping[str, X]``, ``Any`` and nested dataclasses. String annotations
(``from __future__ import annotations``) are resolved with :func:`typing.get_type_hints`, so config classes must
be defined at module level (names inside a function body cannot be resolved).

Conversion rules (deliberately strict, because a silently mis-typed hyper-parameter costs a training run):

* ``bool`` accepts only YAML booleans (``true``/``false``); ``0``, ``1``, ``"yes"`` are errors.
* ``str`` does not accept numbers: ``name: 1.10`` is the float 1.1 in YAML, so it is an error; quote it.
* ``float`` accepts ints (``lr: 1`` -> 1.0).
* ``int`` accepts floats with an integral value (``max_steps: 3.0e5`` -> 300000); ``2.5`` is an error.
* Numeric strings for ``float``/``int`` fields are converted. PyYAML implements YAML 1.1, whose float syntax
  requires a dot, so ``1e-6`` and ``3e5`` (from a file *or* from ``--set``) load as the *strings* ``'1e-6'`` and
  ``'3e5'``. Since nobody means a string for a learning rate, a string that is a plain decimal/scientific number
  is converted when the target field is numeric (``'3e5'`` -> 300000 for ``int``; a non-integral value such as
  ``'1e-6'`` for an ``int`` field is an error). A quoted ``"1e-6"`` is therefore accepted as well; the two cannot
  be told apart after parsing. Anything else (``'abc'``, ``'inf'``, ``'1_000'``) stays an error.
* ``Path`` accepts non-empty strings; ``~`` and environment variables are *not* expanded (no hidden magic).
* ``Enum`` accepts a member's value, then a member's name; :func:`to_dict` writes the value.
* Tuples and lists accept YAML lists; fixed-length tuples check the length.

A config class may list keys it no longer has in a class attribute ``REMOVED_KEYS: ClassVar[dict[str, str]]``
(key -> what to do instead); a config that still sets one gets that explanation rather than a "did you mean" guess.

Errors raise :class:`ConfigError` (a ``ValueError``) naming the dotted key (``optim.lr``), the file when known,
what was expected and what was found, e.g. ``cfg.yaml: optim.lr: expected float, got str 'abc'``. Conversion
stops at the first error.
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import difflib
import enum
import functools
import pathlib
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

import yaml

__all__ = [
    "ConfigError",
    "apply_overrides",
    "from_dict",
    "load_config",
    "parse_override",
    "replace_path",
    "to_dict",
    "to_yaml",
]

T = TypeVar("T")

# A plain decimal or scientific number, as a user would type it for a numeric field. Deliberately excludes
# 'inf'/'nan'/'1_000' which Python's float() accepts but which are not numbers a YAML 1.1 reader missed.
_NUMERIC_STRING = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_MAX_REPR = 60  # characters of an offending value quoted in an error message


class ConfigError(ValueError):
    """A config could not be read, parsed or typed.

    Attributes:
        message: what went wrong, starting with the dotted key when there is one (``optim.lr: expected ...``).
        key: the dotted key concerned (``""`` for the top level or for file-level errors).
        source: where the data came from (a file path, or a ``--set`` override), prefixed to the message.
    """

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.source = source

    def __str__(self) -> str:
        # Computed rather than frozen into args, so callers can attach the source after the fact (load_config
        # knows the file and which keys came from --set; the recursive builder does not).
        return f"{self.source}: {self.message}" if self.source else self.message

    def __reduce__(self):  # keep key/source across pickling (e.g. errors raised in spawned DDP workers)
        return (type(self), (self.message,), {"key": self.key, "source": self.source})


# --------------------------------------------------------------------------------------------------------------
# Building dataclasses from mappings
# --------------------------------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build the (possibly nested) dataclass ``cls`` from ``data``, checking keys and types recursively.

    Args:
        cls: a dataclass type (frozen or not) whose fields are annotated with the supported types.
        data: the raw mapping, typically ``yaml.safe_load`` output (keys are field names).
        where: where ``data`` came from, e.g. the config file path; prefixed to error messages.

    Returns:
        An instance of ``cls``. Fields absent from ``data`` take their defaults.

    Raises:
        ConfigError: unknown or missing keys, wrong types, or a ``ValueError`` from a ``__post_init__`` check.
        TypeError: ``cls`` is not a dataclass or uses an unsupported annotation (a programming error).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    try:
        return _build_dataclass(cls, data, key="")
    except ConfigError as err:
        if where:
            err.source = where  # mutate and re-raise: keeps the traceback and any __post_init__ cause
        raise


def _build_dataclass(cls: type[T], data: Any, key: str, expected: str | None = None) -> T:
    """Convert a mapping at dotted ``key`` into ``cls``; checks unknown/missing keys, then each field."""
    if isinstance(data, cls):  # already built (programmatic use, replace_path)
        return data
    if not isinstance(data, Mapping):
        raise _type_error(key, expected or _expected(cls), data)

    fields = _init_fields(cls)
    unknown = [str(name) for name in data if name not in fields]
    if unknown:
        raise _unknown_keys_error(key, unknown, list(fields), getattr(cls, "REMOVED_KEYS", {}))
    missing = [name for name, f in fields.items() if name not in data and _is_required(f)]
    if missing:
        names = ", ".join(repr(_join(key, name)) for name in missing)
        raise ConfigError(f"missing required field{'s' if len(missing) > 1 else ''} {names}", key=key)

    hints = _type_hints(cls)
    kwargs = {name: _convert(hints[name], value, _join(key, name)) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:
        # Validation in __post_init__ (e.g. "depth must be in depth_choices"): report it with the key and file.
        where = repr(key) if key else "config"
        raise ConfigError(f"invalid {cls.__name__} at {where}: {err}", key=key) from err


def _convert(tp: Any, value: Any, key: str, expected: str | None = None) -> Any:
    """Check ``value`` against annotation ``tp`` and return the converted value.

    ``expected`` overrides the type description in error messages (used by unions, so that an ``Optional[int]``
    field says "expected int or null" rather than "expected int").
    """
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(key, expected or "null", value)

    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(tp, value, key)
    if origin is Literal:
        return _convert_literal(tp, value, key, expected)
    if origin is tuple or tp is tuple:
        return _convert_tuple(tp, value, key, expected)
    if origin is list or tp is list:
        return _convert_list(tp, value, key, expected)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return _convert_dict(tp, value, key, expected)
    if origin is not None:
        raise TypeError(f"{key}: unsupported config annotation {tp!r}")

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, key, expected)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _convert_enum(tp, value, key, expected)
    if tp is bool:
        # type() rather than isinstance(): YAML has real booleans, and 0/1 for a flag is almost always a typo.
        if type(value) is bool:
            return value
        raise _type_error(key, expected or "bool", value)
    if tp is int:
        return _convert_int(value, key, expected)
    if tp is float:
        return _convert_float(value, key, expected)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, expected or "str", value, hint="quote the value in YAML if it is meant as text")
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        if isinstance(value, pathlib.PurePath):
            return tp(value)
        if isinstance(value, str) and value:
            return tp(value)
        raise _type_error(key, expected or "path (non-empty str)", value)
    raise TypeError(f"{key}: unsupported config annotation {tp!r}")


def _convert_int(value: Any, key: str, expected: str | None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 3.0e5 written for a step count
    if isinstance(value, str) and _NUMERIC_STRING.fullmatch(value.strip()):
        # YAML 1.1 reads '3e5' as a string; Decimal keeps large integers exact where float would round.
        number = decimal.Decimal(value.strip())
        if number == number.to_integral_value():
            return int(number)
    raise _type_error(key, expected or "int", value)


def _convert_float(value: Any, key: str, expected: str | None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and _NUMERIC_STRING.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads '1e-6' (no dot) as a string
    raise _type_error(key, expected or "float", value)


def _convert_union(tp: Any, value: Any, key: str) -> Any:
    args = typing.get_args(tp)
    non_none = [a for a in args if a is not type(None)]
    if value is None and len(non_none) < len(args):
        return None
    expected = " or ".join(_expected(a) for a in args)
    if len(non_none) == 1:
        # Optional[X]: delegate, so nested errors (a bad item in an optional list, a bad field of an optional
        # dataclass) keep their precise key; only the top-level description mentions null.
        return _convert(non_none[0], value, key, expected=expected)
    # General union: an arm whose type matches exactly wins (so 'str | float' keeps the string '1e-6'), then
    # the arms are tried in declaration order with conversion.
    ordered = sorted(non_none, key=lambda a: 0 if (isinstance(a, type) and type(value) is a) else 1)
    for arm in ordered:
        try:
            return _convert(arm, value, key)
        except ConfigError:
            continue
    raise _type_error(key, expected, value)


def _convert_literal(tp: Any, value: Any, key: str, expected: str | None) -> Any:
    allowed = typing.get_args(tp)
    for option in allowed:
        # Compare types too: Literal[1] must not accept True, Literal['1'] must not accept 1.
        if type(value) is type(option) and value == option:
            return option
    hint = _suggest(value, [a for a in allowed if isinstance(a, str)])
    raise _type_error(key, expected or _expected(tp), value, hint=hint)


def _convert_enum(tp: type[enum.Enum], value: Any, key: str, expected: str | None) -> enum.Enum:
    if isinstance(value, tp):
        return value
    for member in tp:
        if type(value) is type(member.value) and value == member.value:
            return member
    if isinstance(value, str) and value in tp.__members__:
        return tp.__members__[value]
    hint = _suggest(value, [m.value for m in tp if isinstance(m.value, str)])
    raise _type_error(key, expected or _expected(tp), value, hint=hint)


def _convert_tuple(tp: Any, value: Any, key: str, expected: str | None) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, expected or _expected(tp), value)
    args = typing.get_args(tp)
    if not args:  # bare `tuple`
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, f"{key}[{i}]") for i, item in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(
            f"{key}: expected a list of {len(args)} items ({_annotation(tp)}), got {len(value)} items: "
            f"{_short_repr(list(value))}",
            key=key,
        )
    return tuple(_convert(arg, item, f"{key}[{i}]") for i, (arg, item) in enumerate(zip(args, value, strict=True)))


def _convert_list(tp: Any, value: Any, key: str, expected: str | None) -> list:
    if not isinstance(value, (list, tuple)):
        raise _type_error(key, expected or _expected(tp), value)
    args = typing.get_args(tp)
    item_tp = args[0] if args else Any
    return [_convert(item_tp, item, f"{key}[{i}]") for i, item in enumerate(value)]


def _convert_dict(tp: Any, value: Any, key: str, expected: str | None) -> dict:
    if not isinstance(value, Mapping):
        raise _type_error(key, expected or _expected(tp), value)
    args = typing.get_args(tp)
    key_tp, value_tp = args if args else (Any, Any)
    # Dotted keys for dict entries match the --set syntax (`--set supernet.distill_weights.kl=0.5`).
    return {
        _convert(key_tp, k, f"{key} (key {k!r})"): _convert(value_tp, v, _join(key, str(k))) for k, v in value.items()
    }


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations of ``cls`` (cached: resolving string annotations re-evaluates them)."""
    try:
        return typing.get_type_hints(cls)
    except NameError as err:
        raise TypeError(
            f"cannot resolve the annotations of {cls.__qualname__}: {err}. Config dataclasses must be defined at "
            "module level so that string annotations (from __future__ import annotations) can be evaluated."
        ) from err


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields a user may set: ``init=False`` fields are derived, never read from a config."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _is_required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# --------------------------------------------------------------------------------------------------------------
# Error messages
# --------------------------------------------------------------------------------------------------------------


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_REPR else text[: _MAX_REPR - 3] + "..."


def _describe(value: Any) -> str:
    """``str 'abc'``, ``int 3``, ``null``: the type as the user wrote it, then the value."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short_repr(value)}"


def _type_error(key: str, expected: str, value: Any, hint: str = "") -> ConfigError:
    prefix = f"{key}: " if key else ""
    suffix = f" ({hint})" if hint else ""
    return ConfigError(f"{prefix}expected {expected}, got {_describe(value)}{suffix}", key=key)


def _suggest(value: Any, candidates: Iterable[str]) -> str:
    """A "did you mean" hint for a mistyped string, or ``""``."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, list(candidates), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def _unknown_keys_error(prefix: str, unknown: list[str], valid: list[str],
                        removed: Mapping[str, str] | None = None) -> ConfigError:
    for name in unknown:
        if removed and name in removed:  # a key the class dropped: say why and what to do instead
            return ConfigError(f"{_join(prefix, name)!r} was removed: {removed[name]}", key=_join(prefix, name))
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {_join(prefix, close[0])!r}?)" if close else ""
        parts.append(f"{_join(prefix, name)!r}{hint}")
    scope = f" in {prefix!r}" if prefix else ""
    noun = "key" if len(unknown) == 1 else "keys"
    return ConfigError(
        f"unknown {noun} {', '.join(parts)}; valid keys{scope}: {', '.join(valid) or '(none)'}",
        key=_join(prefix, unknown[0]),
    )


def _expected(tp: Any) -> str:
    """How an annotation reads in "expected ..." messages, in the user's (YAML) terms where it helps."""
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " or ".join(_expected(a) for a in typing.get_args(tp))
    if origin in (tuple, list) or tp in (tuple, list):
        return f"a list ({_annotation(tp)})"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return f"a mapping ({_annotation(tp)})"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp) + f" ({tp.__name__})"
    if isinstance(tp, type) and issubclass(tp, pathlib.PurePath):
        return "path (non-empty str)"
    return _annotation(tp)


def _annotation(tp: Any) -> str:
    """A Python-like rendering of an annotation: ``tuple[int, ...]``, ``dict[str, float]``, ``Path | None``."""
    if tp is Ellipsis:
        return "..."
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return f"Literal[{', '.join(repr(a) for a in typing.get_args(tp))}]"
    if origin is Union or origin is types.UnionType:
        return " | ".join(_annotation(a) for a in typing.get_args(tp))
    if origin is not None:
        args = typing.get_args(tp)
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_annotation(a) for a in args)}]" if args else name
    return getattr(tp, "__name__", str(tp))


# --------------------------------------------------------------------------------------------------------------
# Dataclasses -> plain data -> YAML
# --------------------------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> dict[str, Any]:
    """Turn a dataclass instance into plain YAML-safe data (nested dicts, lists, str, numbers, bool, None).

    Paths become strings, tuples become lists, enums become their values; ``init=False`` fields are left out
    because :func:`from_dict` would reject them. The result round-trips: ``from_dict(type(x), to_dict(x)) == x``.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {type(obj).__name__}")
    return _to_plain(obj, "")


def _to_plain(value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _to_plain(getattr(value, name), _join(key, name)) for name in _init_fields(type(value))}
    if isinstance(value, enum.Enum):
        return _to_plain(value.value, key)
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_to_plain(item, f"{key}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {_to_plain(k, key): _to_plain(v, _join(key, str(k))) for k, v in value.items()}
    if value is None:
        return None
    # Subclasses of the scalar types (numpy-free, but e.g. a str subclass) are normalised: safe_dump rejects them.
    for scalar in (bool, int, float, str):  # bool before int: bool is an int subclass
        if isinstance(value, scalar):
            return scalar(value)
    raise TypeError(f"{key or 'config'}: cannot serialise {type(value).__name__} {_short_repr(value)} to YAML")


class _ConfigDumper(yaml.SafeDumper):
    """SafeDumper that writes short lists of scalars inline (``depth_choices: [30, 24, 16]``) for readability."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(item is None or isinstance(item, (bool, int, float, str)) for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


# Registered on the private subclass only: yaml.SafeDumper itself is left untouched (no global side effect).
_ConfigDumper.add_representer(list, _represent_list)


def to_yaml(obj: Any) -> str:
    """Serialise a config dataclass to YAML, fields in declaration order.

    Round-trips through :func:`from_dict`: ``from_dict(cls, yaml.safe_load(to_yaml(x))) == x``. Floats are
    written with a dot (``1.0e-06``), so they read back as floats even under YAML 1.1.
    """
    return yaml.dump(to_dict(obj), Dumper=_ConfigDumper, sort_keys=False, allow_unicode=True, width=120)


# --------------------------------------------------------------------------------------------------------------
# --set overrides
# --------------------------------------------------------------------------------------------------------------


def parse_override(s: str) -> tuple[str, Any]:
    """Split ``"optim.lr=1e-4"`` into ``("optim.lr", value)``, parsing the value as YAML.

    So ``true``, ``null``, ``[16, 8]`` and ``{kl: 0.5}`` have their YAML meaning; an empty value is ``null``
    (write ``name=''`` for an empty string). Scientific notation without a dot (``1e-6``) parses as a string
    under YAML 1.1 and is converted when the target field is numeric (see the module docstring).

    Raises:
        ConfigError: no ``=``, an empty key or key segment, or a value that is not valid YAML.
    """
    key, sep, raw = s.partition("=")
    key = key.strip()
    if not sep:
        raise ConfigError(f"malformed override {s!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
    if not key or any(not part.strip() for part in key.split(".")):
        raise ConfigError(f"malformed override {s!r}: the key must be a dotted field name like optim.lr")
    key = ".".join(part.strip() for part in key.split("."))
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value of override {s!r} as YAML: {err}", key=key) from err
    return key, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of the raw mapping ``data`` with each ``key=value`` override set, in order.

    Overrides act on the raw data *before* typing, so a mistyped key (``optim.lrr``) is reported by
    :func:`from_dict` exactly like a mistyped key in the file. Missing intermediate mappings are created (also
    over a ``null``, e.g. an optional section left empty in the file); setting a mapping value replaces the
    whole sub-mapping (no merge). ``data`` is not modified.

    Raises:
        ConfigError: a malformed override, or a path that goes through a non-mapping value.
    """
    result = copy.deepcopy(dict(data))
    for override in overrides:
        key, value = parse_override(override)
        parts = key.split(".")
        node: dict[str, Any] = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                if not isinstance(child, Mapping):
                    parent = ".".join(parts[: depth + 1])
                    raise ConfigError(
                        f"cannot apply override {override!r}: {parent!r} is {_describe(child)}, not a mapping",
                        key=parent,
                    )
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return result


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML silently keeps the last one, hiding a stale setting."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' entries may be overridden: allowed
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first_line = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # unhashable key: let the base class raise its usual error
                continue
            if first_line != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first defined on line {first_line + 1})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_config(cls: type[T], path: str | pathlib.Path, overrides: Iterable[str] = ()) -> T:
    """Read a YAML config file, apply ``--set`` overrides and build ``cls`` from it.

    An empty file is an empty mapping (every field takes its default). Errors caused by an override name the
    override (``--set optim.lrr=1 (config cfg.yaml): unknown key 'optim.lrr' ...``); others name the file.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid YAML (message has ``file:line:column``), has
            duplicate keys, its top level is not a mapping, an override is malformed, or typing fails.
    """
    path = pathlib.Path(path)
    overrides = list(overrides)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {str(path)!r} {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file: {err}", source=str(path)) from err
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        location = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = f" ({err.context})" if err.context else ""
        raise ConfigError(f"invalid YAML: {err.problem}{context}", source=location) from err
    except yaml.YAMLError as err:
        raise ConfigError(f"invalid YAML: {err}", source=str(path)) from err
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"the top level must be a mapping of sections, got {_describe(data)}", source=str(path))

    try:
        override_keys = [parse_override(o)[0] for o in overrides]
        data = apply_overrides(data, overrides)
    except ConfigError as err:
        err.source = err.source or str(path)
        raise
    try:
        return from_dict(cls, data, where=str(path))
    except ConfigError as err:
        # Point at the --set flag rather than the file when the offending key came from the command line; when
        # overrides only went *inside* the failing section (a __post_init__ check), name them beside the file.
        culprits = [o for k, o in zip(override_keys, overrides, strict=True) if _is_within(err.key, k)]
        inside = [o for k, o in zip(override_keys, overrides, strict=True) if _is_within(k, err.key)]
        if culprits:
            err.source = f"--set {culprits[-1]} (config {path})"
        elif inside:
            err.source = f"{path} with " + " ".join(f"--set {o}" for o in inside)
        raise


def _is_within(key: str, section: str) -> bool:
    """Whether dotted ``key`` is ``section`` or lies inside it (``optim.lr``, ``depth_choices[1]``)."""
    if not key or not section:
        return False
    return key == section or key.startswith((section + ".", section + "["))


# --------------------------------------------------------------------------------------------------------------
# Programmatic overrides
# --------------------------------------------------------------------------------------------------------------


def replace_path(obj: T, path: str, value: Any) -> T:
    """Return a copy of the dataclass tree ``obj`` with the field at dotted ``path`` set to ``value``.

    ``dataclasses.replace`` is applied at every level, so frozen dataclasses work and ``__post_init__`` checks
    run again. ``value`` is checked and converted like config data (``replace_path(cfg, "optim.lr", 1)`` stores
    ``1.0``; a list for a tuple field becomes a tuple).

    Raises:
        ConfigError: an unknown field in ``path`` (with suggestions), a ``None`` section on the way, or a
            value of the wrong type.
    """
    return _replace(obj, path.split("."), "", value)


def _replace(obj: Any, parts: list[str], prefix: str, value: Any) -> Any:
    name, rest = parts[0], parts[1:]
    key = _join(prefix, name)
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise ConfigError(f"cannot set {key!r}: {prefix or 'the root'!r} is {_describe(obj)}, not a config section")
    fields = _init_fields(type(obj))
    if name not in fields:
        raise _unknown_keys_error(prefix, [name], list(fields), getattr(type(obj), "REMOVED_KEYS", {}))
    if rest:
        new_value = _replace(getattr(obj, name), rest, key, value)
    else:
        new_value = _convert(_type_hints(type(obj))[name], value, key)
    try:
        return dataclasses.replace(obj, **{name: new_value})
    except ValueError as err:
        where = repr(prefix) if prefix else "config"
        raise ConfigError(f"invalid {type(obj).__name__} at {where}: {err}", key=prefix) from err


def ensure_config(cls: type[T], value: T | Mapping[str, Any], where: str = "") -> T:
    """`value` itself when it already is a `cls`, else `from_dict(cls, value)` (e.g. a config restored from a
    checkpoint's plain-dict hyper-parameters)."""
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        return from_dict(cls, value, where)
    raise TypeError(f"expected a {cls.__name__} or a mapping, got {type(value).__name__}")
