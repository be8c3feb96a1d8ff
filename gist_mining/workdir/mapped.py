"""Arrow IPC tables memory-mapped for reads by position, whose pages a reader hands back (``MappedTable``)."""

from __future__ import annotations

import mmap
from pathlib import Path

import pyarrow as pa


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
