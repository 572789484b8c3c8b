"""Loading the run configuration: YAML files plus ``key=value`` overrides, validated into the dataclasses of
:mod:`jaxtune.config.schema`.

:func:`load_config` lays YAML files over each other (a recipe, then a hardware preset), applies ``key=value``
overrides (:func:`parse_override`), resolves ``model.preset`` (:mod:`jaxtune.config.presets`, :func:`preset_values`)
and builds a :class:`~jaxtune.config.schema.Config`, coercing each value to its field's annotation.
:func:`config_from_dict` does the same from a nested dict, :func:`model_config_from_dict` for a model section alone
(one stored beside a checkpoint); :func:`config_to_dict` and :func:`dump_config` go back.

Loading is strict: a key repeated in one YAML mapping (at any depth; :func:`load_yaml`, also the reader of sweep
files), an unknown key, a value of the wrong type and a value no run can use (each section's own rules) raise one
:class:`~jaxtune.config.schema.ConfigError` listing every problem found, each naming its dotted key and the value
(and the closest valid key, both lines of a repeated one, the YAML file it came from, or the override that set it).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence, Union

import yaml

from jaxtune.config.presets import PRESETS
from jaxtune.config.schema import Config, ConfigError, ModelConfig, dotted_key
from jaxtune.names import unknown_name_message

ModelSource = Callable[[dict], list[str]]
"""A hook that completes a config's raw nested dict (its model section) and returns the problems it found."""


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _coerce(value: Any, tp: Any, key: str, problems: Optional[list[str]] = None) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, str -> Path...). Problems
    inside a nested section go to ``problems`` (raised at once when it is None)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: expected one of {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # "a,b" on the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        if problems is not None:
            return _build(tp, value, key, problems)
        inner: list[str] = []
        built = _build(tp, value, key, inner)
        if inner:
            raise ConfigError(inner)
        return built
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _unknown_key_error(cls: type, name: str, prefix: str) -> ConfigError:
    valid = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{prefix}{name}'{hint}")


def preset_values(name: str, key: str = "model.preset") -> dict[str, Any]:
    """The fields of a named shape of :mod:`jaxtune.config.presets`; an unknown name is a ConfigError listing the known
    ones."""
    if name not in PRESETS:
        raise ConfigError(f"{key}: " + unknown_name_message("model preset", name, sorted(PRESETS)))
    return dict(PRESETS[name], preset=name)


def _build(cls: type, values: dict, prefix: str, problems: list[str]) -> Any:
    """The dataclass ``cls`` from ``values``; each unknown or ill-typed key is appended to ``problems`` (and the
    field keeps its default, so that the values' own checks can still run and be reported together)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    pre = f"{prefix}." if prefix else ""
    known = {}
    for k, v in values.items():
        if k in names:
            known[k] = v
        else:
            problems.append(str(_unknown_key_error(cls, str(k), pre)))
    if cls is ModelConfig and known.get("preset"):
        try:
            merged = dict(preset_values(known["preset"], key=f"{pre}preset"))
        except ConfigError as e:
            problems.extend(e.problems)
            merged = {}
        merged.update(known)
        known = merged
    kwargs = {}
    for k, v in known.items():
        try:
            kwargs[k] = _coerce(v, hints[k], f"{pre}{k}", problems)
        except ConfigError as e:
            problems.extend(e.problems)
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


OVERRIDE_PREFIX = "command-line override"
"""How a problem of a ``key=value`` override starts (it is not the YAML file's)."""


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.epochs=3)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(
    values: dict, overrides: list[str] | tuple[str, ...] = (), model_source: Optional[ModelSource] = None
) -> Config:
    """Build a validated :class:`Config` from a nested dict and ``key=value`` overrides; ``model_source`` (e.g.
    :func:`jaxtune.convert.architecture.inherit_architecture`) completes the raw model section after the overrides.

    Raises one ConfigError listing every problem: bad overrides, unknown or ill-typed keys, unusable values."""
    tree = _deep_copy(values)
    problems: list[str] = []
    for text in overrides:
        try:
            key, value = parse_override(text)
            tp = _check_path(key)
            if not _is_dataclass_type(tp):
                _coerce(value, tp, key)  # type errors of an override are reported as the override's
            if key == "model.preset" and value:
                preset_values(value, key=key)
            _set_dotted(tree, key, value)
        except ConfigError as e:
            problems += [f"{OVERRIDE_PREFIX} {text!r}: {p}" for p in e.problems]
    if model_source is not None:
        try:
            problems += model_source(tree)
        except ConfigError as e:
            problems += e.problems
    config = _build(Config, tree, "", problems)
    problems += [_attribute(p, overrides) for p in config.problems("")]
    if problems:
        raise ConfigError(problems)
    return config


def _attribute(problem: str, overrides: Sequence[str]) -> str:
    """A value's problem, marked as the command line's when an override set a key it names (the last such one)."""
    for text in reversed(overrides):
        key = text.split("=", 1)[0].strip()
        if key and re.search(rf"(?<![\w.]){re.escape(key)}(?![\w.])", problem):
            return f"{OVERRIDE_PREFIX} {text!r}: {problem}"
    return problem


def _check_path(dotted: str) -> Any:
    """Fail early on an override whose key names no field, before it is merged; return the field's type."""
    cls: Any = Config
    prefix = ""
    for part in dotted.split("."):
        if not _is_dataclass_type(cls):
            raise ConfigError(f"unknown config key '{dotted}': '{prefix.rstrip('.')}' has no sub-keys")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key_error(cls, part, prefix)
        tp = hints[part]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        cls = args[0] if typing.get_origin(tp) in (Union, types.UnionType) and len(args) == 1 else tp
        prefix += part + "."
    return tp


def _deep_copy(values: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key repeated in one mapping (at any depth) is an error: PyYAML silently
    keeps the last one, so a second ``train:`` section would replace the first."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        duplicates: list[str] = []
        _find_duplicate_keys(node, "", duplicates, set())
        if duplicates:
            raise ConfigError(sorted(duplicates, key=lambda m: int(m.split("at lines ")[1].split()[0])))
        return self.construct_document(node)


def _find_duplicate_keys(node: yaml.Node, path: str, out: list[str], seen_nodes: set[int]) -> None:
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            child = path
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                child = dotted_key(path, key_node.value)
                if ident in first_line:
                    out.append(
                        f"duplicate key '{child}' at lines {first_line[ident]} and {line} (YAML would keep "
                        f"only the last; keep one)"
                    )
                else:
                    first_line[ident] = line
            _find_duplicate_keys(value_node, child, out, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _find_duplicate_keys(item, f"{path}[{i}]", out, seen_nodes)


def load_yaml(path: str | os.PathLike) -> Any:
    """The YAML document of ``path``; ConfigError naming the file for invalid YAML or a repeated key."""
    p = Path(path)
    try:
        return yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError([f"{p}: {m}" for m in e.problems]) from None


def _merge(base: dict, extra: dict) -> dict:
    """``extra`` laid over ``base``: sections merge key by key, values replace."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(
    path: str | os.PathLike | Sequence[str | os.PathLike] | None,
    overrides: list[str] | tuple[str, ...] = (),
    model_source: Optional[ModelSource] = None,
) -> Config:
    """Load a YAML config file (or the defaults when ``path`` is None) and apply ``key=value`` overrides.

    ``path`` may be several files, laid over each other in order (a recipe, then a hardware preset such as
    ``configs/hardware/v5p-16.yaml``): sections merge key by key, later values win, overrides win over all.
    Raises one ConfigError listing every problem, each naming the dotted key (and the file, for the file's).
    """
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    values: dict = {}
    for one in paths:
        p = Path(one)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = load_yaml(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: expected a mapping at the top level, got {type(loaded).__name__}")
        values = _merge(values, loaded)
    try:
        return config_from_dict(values, overrides, model_source)
    except ConfigError as e:
        if not paths:
            raise
        where = str(paths[0]) if len(paths) == 1 else " + ".join(str(p) for p in paths)
        raise ConfigError([p if p.startswith(OVERRIDE_PREFIX) else f"{where}: {p}" for p in e.problems]) from None


def config_to_dict(config: Any) -> dict:
    """The config as a plain nested dict (for YAML dumps and checkpoints)."""
    return dataclasses.asdict(config)


def dump_config(config: Config) -> str:
    """The resolved config as YAML text; load_config reads it back to an equal Config."""
    values = config_to_dict(config)
    values["model"]["preset"] = None  # the resolved fields already hold the preset's values
    return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def model_config_from_dict(values: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a dict (e.g. one stored beside a checkpoint)."""
    problems: list[str] = []
    cfg = _build(ModelConfig, dict(values), "model", problems)
    problems += cfg.problems("model")
    if problems:
        raise ConfigError(problems)
    return cfg
