"""Typed YAML: checking plain YAML data against dataclass annotations, with the key that is wrong.

:func:`build` turns a mapping into the dataclass tree of its annotations
(``int``, ``float``, ``str``, ``bool``, ``Literal``, ``X | None``, ``list[X]``,
nested dataclasses), refusing unknown keys (with the nearest valid one) and
values outside the bounds declared with :func:`bounded`. The YAML file helpers
(``extends:`` chains, ``key=value`` overrides, the line of a key) live here too;
:mod:`persona_pipeline.core.config` holds the schema itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from persona_pipeline.core.errors import ConfigError


def bounded(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
            lt: float | None = None) -> Any:
    """A dataclass field with a range check (``None`` values pass: they mean "not set")."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"bounds": bounds})


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_bounds(obj: Any, where: str) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for kind, bound in f.metadata.get("bounds", {}).items():
            if value is not None and not _BOUND_OK[kind](value, bound):
                key = f"{where}.{f.name}" if where else f.name
                raise SchemaError(key, f"{key}: must be {_BOUND_TEXT[kind]} {bound:g}, got {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)}


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else "valid keys: " + ", ".join(sorted(valid))


class SchemaError(Exception):
    def __init__(self, key: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.key, self.message, self.hint = key, message, hint


def build(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and build dataclasses; raise SchemaError."""

    def fail(msg: str) -> SchemaError:
        return SchemaError(where, f"{where}: {msg}")

    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise fail(f"expected a mapping of settings, got {type(value).__name__}")
        fields = _field_types(tp)
        kwargs = {}
        for key, val in value.items():
            sub = f"{where}.{key}" if where else str(key)
            if key not in fields:
                raise SchemaError(sub, f"unknown key '{sub}'", did_you_mean(str(key), list(fields)))
            kwargs[key] = build(fields[key], val, sub)
        try:
            obj = tp(**kwargs)
        except TypeError as exc:  # a required field without a default
            raise fail(str(exc)) from None
        _check_bounds(obj, where)
        return obj
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # X | None: X's own message says what is wrong (e.g. a missing field)
            return build(options[0], value, where)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return build(arg, value, where)
            except SchemaError:
                pass
        raise fail(f"expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise fail(f"expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise fail(f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return [build(get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "2e-4" (no dot) as a string; accept it when it is a number.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    raise fail(f"unsupported type {tp!r}")  # pragma: no cover - schema bug


# --------------------------------------------------------------------------- loading


# --------------------------------------------------------------------------- YAML files


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file not found: {path}",
            hint="list the shipped configs with `ls configs/` (paths are relative to pipeline/)",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = val
    return out


def find_root(config_path: Path) -> Path:
    """The pipeline root: the nearest ancestor of the config holding pyproject.toml, else the cwd."""
    for parent in config_path.resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return Path.cwd()


def load_raw(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, Path]]:
    """Read a YAML file and its ``extends:`` chain. Returns merged data and the file each top key came from."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"circular extends: {chain}")
    data = read_yaml(path)
    parent = data.pop("extends", None)
    origin = {k: path for k in data}
    if parent is None:
        return data, origin
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'extends' must be a file name, got {parent!r}")
    target = (path.parent / parent).resolve()
    # A config builds on the shipped configs or on its own neighbours, never on an arbitrary file
    # (whose text would end up in error messages and in every run's saved config).
    allowed = (path.parent, (find_root(path) / "configs").resolve())
    if not any(folder == target.parent or folder in target.parents for folder in allowed):
        line = key_line(path, "extends")
        raise ConfigError(
            f"{path}{f':{line}' if line else ''}: extends: {parent!r} is {target}, outside {allowed[1]} "
            f"and outside this config's folder",
            hint="extend a config in configs/ (e.g. extends: train_tiny.yaml) or one beside this file",
        )
    base, base_origin = load_raw(target, (*seen, path))
    base_origin.update(origin)
    return deep_merge(base, data), base_origin


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} is not key=value", hint="e.g. train.epochs=1 or model.dtype=float32"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def key_line(path: Path, key: str) -> int | None:
    """1-based line of a dotted key in a YAML file (the deepest part of it that is there)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    line = None
    for part in key.split("[")[0].split("."):
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value if k.value == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line
