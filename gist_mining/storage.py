"""Durable, atomic writes and checksums: a reader never finds a half-written file under its real name.

Every file is written under a temporary name in its own folder, flushed to disk (fsync), renamed into
place, and the folder is synced so the rename survives a power loss. Temporary names carry the host and
process id, so a later run can tell a dead process's leftovers (``remove_stale_temps``) from a live one's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TMP_MARK = ".tmp-"


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Make ``tmp`` durable and give it its real name (a file, or a directory with every file in it)."""
    for file in [tmp] if tmp.is_file() else sorted(p for p in tmp.rglob("*") if p.is_file()):
        with open(file, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    tmp.write_bytes(data)
    commit(tmp, path)


def write_json_atomic(obj, path: Path) -> None:
    write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), path)


def write_parquet_atomic(table: pa.Table, path: Path, **options) -> None:
    """``options`` go to pyarrow (default: zstd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    pq.write_table(table, tmp, **{"compression": "zstd", **options})
    commit(tmp, path)


class AtomicParquetWriter:
    """Write a Parquet file batch by batch; it appears under its own name, durable, on a clean close."""

    def __init__(self, path: Path, schema: pa.Schema, **options):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = tmp_name(self.path)
        self.writer = pq.ParquetWriter(self.tmp, schema, **{"compression": "zstd", **options})

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.writer.close()
        if exc_type is None:
            commit(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> int:
    """Delete temporary files left in ``folder`` by dead processes of this host; returns how many."""
    host = socket.gethostname()
    removed = 0
    for tmp in Path(folder).glob(f".*{TMP_MARK}*") if Path(folder).is_dir() else []:
        owner_host, _, pid = tmp.name.rpartition(TMP_MARK)[2].rpartition("-")
        if owner_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: Path) -> str:
    """The hash of a file, or of every file under a directory (a `datasets` dataset saved to disk)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(file_sha256(file).encode())
    return digest.hexdigest()


def config_fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def write_npy_atomic(array: np.ndarray, path: Path) -> None:
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    commit(tmp, path)
