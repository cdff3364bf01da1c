"""The one record ⇄ store codec: every stage's record is written and read from its type annotations, so no file name
or array key is shared as a string between two modules and no record needs a hand-written reader.

A record (a frozen dataclass) is split by its values: numpy arrays go into one `.npz` (`ARRAYS`), keyed by their
dotted field path ("responses.delta_y"); each pandas frame into `<dotted path>.parquet`; a `JacobianReader` field
into nothing (its shards are streamed into the stage's own folder while it computes, `shards.ShardStore`, and opened
from there, `shards.open_shards`); everything
else — scalars, strings, tuples, dicts, nested records — into one JSON file (`VALUES`). `read_record` rebuilds the
record from those files by the annotations (a record, `X | None`, `tuple[X, ...]`, `tuple[X, Y]`, `dict[str, X]`,
arrays, frames). `encode` / `decode` are the JSON half, also used for plain JSON records elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing

import numpy as np
import pandas as pd

from ..results import JacobianReader, Measured
from .cache import StageDir, read_json
from .shards import open_shards

ARRAYS, VALUES = "arrays.npz", "values.json"


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
    return typing.get_type_hints(cls, include_extras=True)


def _measured(kind) -> bool:
    """Whether a field annotation is `Annotated[X, Measured]` (kept in the completion record)."""
    return typing.get_origin(kind) is typing.Annotated and Measured in kind.__metadata__


def _optional(kind):
    """X of `X | None` or of `Annotated[X, …]` (X itself otherwise)."""
    if typing.get_origin(kind) is typing.Annotated:
        return _optional(typing.get_args(kind)[0])
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return next(k for k in typing.get_args(kind) if k is not type(None))
    return kind


def decode(kind, data):
    """`data` (as `encode` wrote it) rebuilt as `kind`: a record class or a field annotation."""
    if data is None:
        return None
    kind = _optional(kind)
    origin = typing.get_origin(kind)
    if kind is tuple:
        return tuple(data)
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v) for v in data)
        return tuple(decode(a, v) for a, v in zip(args, data))
    if origin is dict:
        return {k: decode(typing.get_args(kind)[1], v) for k, v in data.items()}
    if dataclasses.is_dataclass(kind):
        hints = _hints(kind)
        return kind(**{f.name: decode(hints[f.name], data[f.name])
                       for f in dataclasses.fields(kind) if f.name in data})
    return data


# ---------------------------------------------------------------- records in stage folders
def _split(record, prefix: str, arrays: dict, frames: dict) -> dict:
    """The JSON-able part of `record` (its fields at dotted `prefix`), its arrays and frames filed by dotted path into
    `arrays` and `frames` and left out of the JSON (a JacobianReader too: its files are the stage's own), as are
    measured fields (`write_record`)."""
    values, hints = {}, _hints(type(record))
    for f in dataclasses.fields(record):
        value, path = getattr(record, f.name), f"{prefix}{f.name}"
        if isinstance(value, np.ndarray):
            arrays[path] = value
        elif isinstance(value, pd.DataFrame):
            frames[path] = value
        elif dataclasses.is_dataclass(value) and _optional(hints[f.name]) is not JacobianReader:
            values[f.name] = _split(value, f"{path}.", arrays, frames)
        elif _optional(hints[f.name]) is not JacobianReader and not _measured(hints[f.name]):
            values[f.name] = encode(value)
    return values


def write_record(stage: StageDir, record) -> dict:
    """Write `record` into the stage's folder through `stage` (so the completion record lists every file); returns
    the completion record's metadata: the measured fields (`results.Measured`), which stay out of the files."""
    arrays: dict = {}
    frames: dict = {}
    values = _split(record, "", arrays, frames)
    if arrays:
        stage.write_npz(ARRAYS, **arrays)
    for path, frame in frames.items():
        stage.write_parquet(f"{path}.parquet", frame)
    stage.write_json(VALUES, values)
    hints = _hints(type(record))
    return {"measured": {f.name: encode(getattr(record, f.name)) for f in dataclasses.fields(record)
                         if _measured(hints[f.name])}}


def _build(kind, data: dict, path: str, stage: StageDir, arrays: dict):
    """Record class `kind` at dotted `path` from its JSON part `data` and the stage's files."""
    hints, fields = _hints(kind), {}
    for f in dataclasses.fields(kind):
        where, hint = f"{path}{f.name}", _optional(hints[f.name])
        if hint is np.ndarray:
            fields[f.name] = arrays.get(where)
        elif hint is pd.DataFrame:
            fields[f.name] = pd.read_parquet(stage / f"{where}.parquet") if (stage / f"{where}.parquet").is_file() \
                else None
        elif hint is JacobianReader:
            fields[f.name] = open_shards(stage.path)
        elif f.name not in data:
            continue  # a field with a default, absent from an older record
        elif dataclasses.is_dataclass(hint) and data[f.name] is not None:
            fields[f.name] = _build(hint, data[f.name], f"{where}.", stage, arrays)
        else:
            fields[f.name] = decode(hints[f.name], data[f.name])
    return kind(**fields)


def reads_lazily(kind) -> bool:
    """Whether a record class holds files it reads only when used (a JacobianReader field)."""
    return any(_optional(hint) is JacobianReader for hint in _hints(kind).values())


def read_record(stage: StageDir, kind, completion: dict):
    """The record of class `kind` a stage folder holds (as `write_record` wrote it), its measured fields from the
    stage's verified `completion` record."""
    arrays = {}
    if (stage / ARRAYS).is_file():
        with np.load(stage / ARRAYS) as stored:
            arrays = {name: stored[name] for name in stored.files}
    return _build(kind, read_json(stage / VALUES) | completion["measured"], "", stage, arrays)


def ensure_record(stage: StageDir, compute: typing.Callable[[], typing.Any], kind, contents: bool = True):
    """The stage's record, read back from its folder, computing and writing it first when the folder holds no
    verified one (`StageDir.ensure`; `contents` as there). Read back either way, so a caller sees the same objects
    whether the stage was computed now or earlier."""
    completion = stage.ensure(lambda: write_record(stage, compute()), contents)
    return read_record(stage, kind, completion)
