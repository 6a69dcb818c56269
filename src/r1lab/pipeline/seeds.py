"""One pipeline seed for every stage: `offset_seeds` adds it to each stage's own seed."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def offset_seeds(config: T, offset: int, keep: tuple[str, ...] = ()) -> T:
    """`config` with `offset` added to every ``seed`` field of it and of the dataclasses it holds,
    at any depth, except in the top-level fields named in `keep`. An offset of 0 changes nothing.

    >>> from dataclasses import dataclass, field
    >>> @dataclass(frozen=True)
    ... class Inner:
    ...     seed: int = 1
    >>> @dataclass(frozen=True)
    ... class Outer:
    ...     a: Inner = field(default_factory=Inner)
    ...     b: Inner = field(default_factory=Inner)
    >>> offset_seeds(Outer(), 10, keep=("b",))
    Outer(a=Inner(seed=11), b=Inner(seed=1))
    """
    if offset == 0:
        return config
    return _shifted(config, offset, keep)


def _shifted(value: Any, offset: int, keep: tuple[str, ...] = ()) -> Any:
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    changes = {}
    for f in dataclasses.fields(value):
        if f.name in keep:
            continue
        current = getattr(value, f.name)
        if f.name == "seed" and isinstance(current, int):
            changes[f.name] = current + offset
        elif dataclasses.is_dataclass(current):
            changes[f.name] = _shifted(current, offset)
    return dataclasses.replace(value, **changes)
