"""The one dataclass ⇄ JSON codec of the store: records are written as plain JSON and rebuilt from their type hints.

`encode` turns a frozen record (nested records, tuples, numpy scalars) into JSON-able values; `decode(cls, data)`
rebuilds `cls` from them, reading each field's annotation (a record, `X | None`, `tuple[X, ...]`, `tuple[X, Y]`),
so no record needs hand-written `to_dict` / `from_dict` methods.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing

import numpy as np


def encode(obj):
    """JSON-able values of a record, recursively (tuples become lists; numpy scalars Python numbers)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def decode(kind, data):
    """`data` (as `encode` wrote it) rebuilt as `kind`: a record class or a field annotation."""
    if data is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return decode(next(k for k in typing.get_args(kind) if k is not type(None)), data)
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in data)
        return tuple(decode(a, v) for a, v in zip(args, data)) if args else tuple(data)
    if dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        return kind(**{f.name: decode(hints[f.name], data[f.name])
                       for f in dataclasses.fields(kind) if f.name in data})
    return data
