"""Content-keyed, verified results under the cache folder.

A stage's result lives in `<cache_dir>/<stage>/<key>/`; the key hashes everything the result depends on
(input bytes, config fields, the code the stage computes with), so a changed input never reuses a stale
result. Files are written atomically (temporary name, fsync, rename) with mode 0644 in 0755 folders, so a
cache on a shared filesystem is readable by other users.

A stage is complete only when its record `_done.json` exists. `StageDir.complete` is its one writer and
writes it last; it lists every file of the stage with its size and sha256, beside the stage's key and
metadata. Reading verifies every listed file: a missing, truncated or altered file makes the stage
recompute, with a one-line notice on stderr. Jacobian shards carry a record each (`shards.ShardStore`), so a
resumed stage recomputes exactly the shards that are missing or damaged. A file lock per stage makes a
second concurrent run wait for the first and then reuse its result.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import io
import json
import os
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import CacheError

FILE_MODE, DIR_MODE = 0o644, 0o755
RECORD, LOCK = "_done.json", ".lock"


# ---------------------------------------------------------------- hashing and keys
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _memoised_sha256(path: str, size: int, mtime_ns: int) -> str:
    return _sha256(Path(path))


def file_digest(path: str | Path) -> str:
    """sha256 of an input file's bytes (memoised per path, size and mtime: for cache keys, not verification)."""
    st = os.stat(path)
    return _memoised_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def content_key(*parts) -> str:
    """A short stable key from JSON-able parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


# ---------------------------------------------------------------- atomic writes
def _cache_error(path: Path, exc: OSError) -> CacheError:
    return CacheError(str(path), f"cannot write to the cache ({exc.strerror or exc})")


def make_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents with mode 0755 (whatever the umask), or raise CacheError."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        try:
            path.mkdir(exist_ok=True)
            path.chmod(DIR_MODE)
        except OSError as exc:
            raise _cache_error(path, exc) from None


def _write_all(fd: int, data: bytes) -> None:
    """The one low-level write of the cache (the full-disk test makes it raise ENOSPC)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _atomic(path: Path, data: bytes) -> dict:
    """Write `data` to `path` via a temporary sibling and a rename; returns its record entry {size, sha256}."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _cache_error(path, exc) from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would hide a shared cache from other users
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _cache_error(path, exc) from None
        raise
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def npz_bytes(arrays: dict) -> bytes:
    """An uncompressed .npz (readable by np.load) with fixed member timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(member, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


def write_npz(path: Path, **arrays: np.ndarray) -> dict:
    return _atomic(path, npz_bytes(arrays))


def write_parquet(path: Path, frame: pd.DataFrame) -> dict:
    return _atomic(path, parquet_bytes(frame))


def write_json(path: Path, obj) -> dict:
    return _atomic(path, json_bytes(obj))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def npz_shapes(path: Path) -> dict[str, tuple]:
    """Shapes of the arrays of an .npz from their headers, without reading the arrays."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shapes[name.removesuffix(".npy")] = header(fh)[0]
    return shapes


def verify(path: Path, entry: dict, contents: bool = True) -> str | None:
    """What is wrong with `path` against its record entry {size, sha256} (the size alone unless `contents`),
    or None when it matches."""
    try:
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{size} bytes where its record says {entry['size']}"
        if contents and _sha256(path) != entry["sha256"]:
            return "contents differ from its recorded sha256"
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    except (KeyError, TypeError):
        return "malformed record entry"
    return None


def require_writable(folder: Path) -> None:
    """Raise CacheError (one line) unless files can be created in `folder` (created when missing)."""
    folder = Path(folder)
    make_dirs(folder)
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CacheError(str(folder), f"cache folder is not writable ({exc.strerror or exc}); "
                                      "set [runtime] cache_dir to a writable folder") from None


@contextmanager
def folder_lock(folder: Path):
    """Hold the exclusive file lock of `folder` (its `.lock`), blocking until another process releases it."""
    make_dirs(folder)
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        raise _cache_error(folder / LOCK, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------- stages
class StageDir:
    """The folder of one cached stage result, `<cache_dir>/<stage>/<key>/`, and the record of what it holds.

    Files are written through `write_npz` / `write_parquet` / `write_json`, which note each file's size and
    sha256 in `files`; `complete` then writes the record. `ensure` runs the whole protocol.
    """

    def __init__(self, cache_dir: Path, stage: str, key: str):
        self.path = Path(cache_dir) / stage / key
        self.stage, self.key = stage, key
        self.files: dict[str, dict] = {}  # name -> {size, sha256}: what the record will list
        self._reported: set[str] = set()

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        self.files[name] = write_npz(self.path / name, **arrays)

    def write_parquet(self, name: str, frame: pd.DataFrame) -> None:
        self.files[name] = write_parquet(self.path / name, frame)

    def write_json(self, name: str, obj) -> None:
        self.files[name] = write_json(self.path / name, obj)

    def notice(self, name: str, problem: str) -> None:
        """One line on stderr, once per file, saying what is damaged and that it is recomputed."""
        if name not in self._reported:
            self._reported.add(name)
            print(f"cache: {self.path / name}: {problem}; recomputing", file=sys.stderr, flush=True)

    @property
    def has_record(self) -> bool:
        return (self.path / RECORD).is_file()

    def record(self, contents: bool = True, quiet: bool = False) -> dict | None:
        """The completion record if it and every file it lists verify, else None (with a notice if damaged,
        unless `quiet`: for a look ahead at a stage that is read, and reported on, later).

        contents=False checks sizes only: for a stage whose files this run will not read (Jacobian shards when
        the routing stage is cached), so a render does not hash gigabytes; they are hashed whenever they are to be read.
        """
        if not self.has_record:
            return None
        try:
            record = json.loads((self.path / RECORD).read_bytes())
            valid = record["stage"] == self.stage and record["key"] == self.key and isinstance(record["files"], dict)
        except (OSError, ValueError, KeyError, TypeError):
            valid = False
        problem = None if valid else (RECORD, "unreadable completion record")
        for name, entry in record["files"].items() if valid else ():
            issue = verify(self.path / name, entry, contents)
            if issue:
                problem = (name, issue)
                break
        if problem:
            if not quiet:
                self.notice(*problem)
            return None
        return record

    def complete(self, **meta) -> dict:
        """Write the completion record (last, atomically): key, every file written, and the stage's metadata."""
        record = {**meta, "stage": self.stage, "key": self.key, "files": dict(sorted(self.files.items()))}
        write_json(self.path / RECORD, record)
        return record

    def lock(self):
        """The stage's exclusive file lock (a context manager)."""
        return folder_lock(self.path)

    def remove_orphans(self) -> None:
        """Delete temporary files a killed writer left (only called under the lock: no writer is active)."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def ensure(self, compute: Callable[[], dict], contents: bool = True) -> dict:
        """The stage's verified record, computing the stage first when it has none (or a damaged one).

        `compute()` writes the stage's files through this object and returns the record's metadata. It runs
        under the stage lock; a run that waited for another run's lock finds its record and reuses it.
        `contents`: as in `record`.
        """
        record = self.record(contents)
        if record is None:
            with self.lock():
                record = self.record(contents)
                if record is None:
                    self.remove_orphans()
                    self.files.clear()
                    record = self.complete(**compute())
        return record


