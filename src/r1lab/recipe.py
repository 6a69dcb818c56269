"""Frozen dataclass configs filled from a YAML recipe and ``key=value`` overrides.

Each command owns one frozen dataclass that holds every default. `load_config` merges, in order:
the dataclass defaults, the YAML file, then command-line overrides (dotted keys reach nested
sections: ``data.train=path.jsonl``). An unknown key is an error that names the key and the
file, and values are checked against the field types. The resolved config is saved next to the
run's outputs with `save_config`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from r1lab.errors import R1labError
from r1lab.files import read_text, write_text

T = TypeVar("T")


def load_config(cls: type[T], path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Build `cls` from defaults, the YAML file at `path`, and `key=value` overrides."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        values = _read_yaml(Path(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise R1labError(f"override '{item}' is not of the form key=value")
        _set_dotted(values, key.strip(), _parse_value(raw))
    return from_dict(cls, values, source=source)


def from_dict(cls: type[T], values: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Build the (possibly nested) dataclass `cls` from a plain dict, checking keys and types."""
    if not isinstance(values, dict):
        raise R1labError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise R1labError(f"{source}: unknown key '{prefix}{key}' (known: {known})")
    kwargs = {}
    for name, value in values.items():
        default = _default(fields[name])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # a partial section overrides the parent's default for it, not the section class's
            value = _merge(default, value)
        kwargs[name] = _coerce(value, hints[name], f"{prefix}{name}", source)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise R1labError(f"{source}: {e}") from None


def check_choices(kind: str, values, options) -> None:
    """ValueError ``unknown <kind> '<value>' (<kind>s: a, b, ...)`` for the first value not in `options`.

    The config loader turns it into a one-line error naming the config file.
    """
    for value in ([values] if isinstance(values, str) else values):
        if value not in options:
            raise ValueError(f"unknown {kind} '{value}' ({kind}s: {', '.join(options)})")


def check_range(config: Any, low: float | None = None, high: float | None = None, *names: str,
                open_low: bool = False, open_high: bool = False) -> None:
    """ValueError ``<name> must be in <interval>, got <value>`` for the first field of `config`
    (by name) outside the interval; None leaves that side unbounded. NaN is never in range. A
    tuple or dict field is checked item by item.

    >>> check_range(type("C", (), {"top_p": 0.0})(), 0, 1, "top_p", open_low=True)
    Traceback (most recent call last):
    ...
    ValueError: top_p must be in (0, 1], got 0.0
    """
    for name in names:
        value = getattr(config, name)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            above = low is None or (v > low if open_low else v >= low)
            below = high is None or (v < high if open_high else v <= high)
            if not (above and below) or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"{name} must be {_interval(low, high, open_low, open_high)}, got {value!r}")


def _interval(low, high, open_low: bool, open_high: bool) -> str:
    if high is None:
        return f"{'>' if open_low else '>='} {low}"
    if low is None:
        return f"{'<' if open_high else '<='} {high}"
    return f"in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _merge(default: Any, value: dict[str, Any]) -> dict[str, Any]:
    """`value` laid over the dataclass instance `default`, section by section, at any depth."""
    merged = {f.name: getattr(default, f.name) for f in dataclasses.fields(default)}
    for key, item in value.items():
        inner = merged.get(key)
        merged[key] = _merge(inner, item) if dataclasses.is_dataclass(inner) and isinstance(item, dict) else item
    return merged


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise R1labError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise R1labError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise R1labError(f"{path}: a recipe must be a mapping of keys to values")
    return data


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = values
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise R1labError(f"override '{key}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against the type `hint`; convert where it is lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except R1labError as e:
                errors.append(str(e))
        raise R1labError(errors[0] if errors else f"{source}: '{key}' has the wrong type")
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return from_dict(hint, value or {}, source=source, prefix=f"{key}.")
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(hint)
        item_hint = args[0] if args else Any
        return tuple(_coerce(v, item_hint, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise R1labError(f"{source}: '{key}' must be a mapping, got {value!r}")
        k_hint, v_hint = typing.get_args(hint) or (Any, Any)
        return {_coerce(k, k_hint, key, source): _coerce(v, v_hint, f"{key}.{k}", source) for k, v in value.items()}
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            choices = ", ".join(repr(a) for a in typing.get_args(hint))
            raise R1labError(f"{source}: '{key}' must be one of {choices}, got {value!r}")
        return value
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise R1labError(f"{source}: '{key}' must be a finite number, got {value!r}")
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    bool_as_int = hint is int and isinstance(value, bool)
    if hint in (int, float, str, bool) and not (isinstance(value, hint) and not bool_as_int):
        raise R1labError(f"{source}: '{key}' must be {hint.__name__}, got {value!r}")
    return value
