"""Content-keyed, atomically written results under the cache folder.

A result lives in `<cache_dir>/<stage>/<key>/`; the key hashes everything the result
depends on (input file bytes, config fields, code version), so a changed input never
reuses a stale result. Every file is written to a temporary name and renamed; a stage
is complete only once its `_done.json` marker (written last) exists.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime)."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def code_version(*modules: str) -> str:
    """Hash of the named analysis modules (e.g. "jacobians", "model_call"): a change to the code a result depends
    on invalidates it, while a change elsewhere (plots, the report, another stage) keeps it."""
    h = hashlib.sha256()
    for name in sorted(modules):
        h.update(name.encode())
        h.update((PACKAGE_DIR / f"{name}.py").read_bytes())
    return h.hexdigest()[:16]


def content_key(*parts) -> str:
    """A short stable key from JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    return _atomic(Path(path), lambda fh: fh.write(data))


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return write_bytes(path, buf.getvalue())


def write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return write_bytes(path, buf.getvalue())


def write_json(path: Path, obj) -> Path:
    return write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path):
    return json.loads(Path(path).read_text())


class StageDir:
    """The folder of one cached stage result: `<cache_dir>/<stage>/<key>/`."""

    def __init__(self, cache_dir: Path, stage: str, key: str):
        self.path = Path(cache_dir) / stage / key
        self.stage, self.key = stage, key

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        return (self.path / "_done.json").is_file()

    def mark_done(self, **meta) -> None:
        write_json(self.path / "_done.json", {"stage": self.stage, "key": self.key, **meta})

    def meta(self) -> dict:
        return read_json(self.path / "_done.json")
