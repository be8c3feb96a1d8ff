"""Arrow IPC tables built once behind a marker and memory-mapped for reads by position, whose pages a reader hands
back (``MappedTable``, ``mapped_once``, ``write_one_batch``)."""

from __future__ import annotations

import mmap
from pathlib import Path

import pyarrow as pa

from gist_mining.storage import commit, file_sha256, tmp_name
from gist_mining.workdir.markers import build_once
from gist_mining.workdir.readers import checked_file


class MappedTable:
    """The one record batch of an uncompressed Arrow IPC file, mapped read-only: its columns are views of the map,
    searched and taken in place. The pages a read touches (and the kernel's neighbours of each, fault-around) stay
    in this process's RSS until ``release`` hands them back (MADV_DONTNEED: they stay in the page cache, and a
    later read maps them again), so that a long reader holds what it read since its last release, not the file."""

    def __init__(self, path: Path, schema: pa.Schema):
        with open(path, "rb") as fh:
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        self.buffer = pa.py_buffer(self.map)  # its address is the map's
        reader = pa.ipc.open_file(self.buffer)
        self.metadata = reader.schema.metadata or {}
        self.batch = reader.get_batch(0) if reader.num_record_batches else pa.RecordBatch.from_pylist([], schema=schema)

    def release(self) -> None:
        self.map.madvise(mmap.MADV_DONTNEED)


def write_one_batch(path: Path, table: pa.Table) -> tuple[list[Path], dict]:
    """``table`` written atomically to ``path`` as one uncompressed record batch, so that a reader maps every column
    as one array in place; what ``build_once`` records of it (``mapped_once`` checks it at every open)."""
    tmp = tmp_name(path)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=max(1, len(table)))
    commit(tmp, path)
    return [path], {"table": {"rows": len(table), "sha256": file_sha256(path)}}


def mapped_once(work: Path, path: Path, marker: Path, fingerprint: str, build, schema: pa.Schema) -> MappedTable:
    """The table at ``path``, built by ``build`` (returning ``write_one_batch``'s result) once per ``fingerprint``
    behind ``marker`` by whichever reader asks first, checked against the marker's record (size and SHA-256) at
    every open: one whose bytes changed is refused in one line naming ``rm <marker>``. Then mapped."""
    record = build_once(work, marker, fingerprint, build, verify=False)
    checked_file(path, {**record["files"][path.relative_to(work).as_posix()], **record["table"]}, f"rm {marker}")
    return MappedTable(path, schema)
