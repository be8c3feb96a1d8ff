"""Tables on disk as .npy files of fixed-width records, read by row with ``pread`` (``FixedRows``), and such files
built once behind a marker and checked at every open (``built_checked``). Read, never memory-mapped: mapped pages
count in RSS, and the kernel maps cached neighbours of each touched page too (fault-around, and on some kernels
whole 2 MiB folios), so scattered reads of a mapped table of millions of rows soon hold all of it."""

from __future__ import annotations

import os
import weakref
from itertools import repeat
from pathlib import Path

import numpy as np

from gist_mining.errors import UsageError
from gist_mining.storage import file_sha256
from gist_mining.workdir.markers import build_once
from gist_mining.workdir.readers import checked_file

SPANS = 8192  # spans read per loop over Python ints: a window of scattered rows needs no list of them all


class FixedRows:
    """The rows of a .npy file (one dimension of records, or a matrix: a row is then one line of it), read with a
    system call a run of consecutive rows (``pread``: ~1 us a call, where a read into a slice of a preallocated
    array cost ~1.4 us), through a descriptor held open while the object lives: nothing of the file is held but
    what a read returns. The arrays returned are read-only."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_RDONLY)
        weakref.finalize(self, os.close, self.fd)
        with os.fdopen(os.dup(self.fd), "rb") as fh:  # the header of the file the reads will read
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            self.shape, fortran_order, self.dtype = read_header(fh)
            self.offset = fh.tell()
        if fortran_order and len(self.shape) > 1:
            raise UsageError(f"{self.path}: in Fortran order, not rows; delete it to rebuild it")
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows ``rows`` (any order, repeats allowed), each distinct row read once."""
        rows = np.asarray(rows, dtype=np.int64)
        distinct, where = np.unique(rows, return_inverse=True)
        starts = np.flatnonzero(np.diff(distinct, prepend=-2) != 1)
        counts = np.diff(np.append(starts, len(distinct)))
        return self.read_spans(distinct[starts], counts)[where]

    def columns(self, *fields: str, chunk: int = 1 << 16) -> tuple[np.ndarray, ...]:
        """Each of ``fields`` of every record, in one pass over the file ``chunk`` records at a time (never the whole
        file at once)."""
        parts = []
        for start in range(0, max(len(self), 1), chunk):  # no records: one empty read, for the fields' shapes
            records = self.read_spans([start], [min(chunk, len(self) - start)])
            # a copy of each field: a view would hold the chunk's whole records until the end
            parts.append([records[field].copy() for field in fields])
        return tuple(np.concatenate(column) for column in zip(*parts))

    def read_spans(self, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Rows starts[i] .. starts[i] + counts[i] - 1 for each i, end to end: one read a span."""
        data = b"".join(self.spans(starts, counts))
        return np.frombuffer(data, self.dtype).reshape(len(data) // self.row_bytes if self.row_bytes else 0,
                                                       *self.shape[1:])

    def spans(self, starts: np.ndarray, counts: np.ndarray) -> list[bytes]:
        """The bytes of rows starts[i] .. starts[i] + counts[i] - 1, one ``bytes`` a span (empty where counts[i] is
        0)."""
        sizes = (np.asarray(counts, dtype=np.int64) * self.row_bytes).tolist()
        offsets = (self.offset + np.asarray(starts, dtype=np.int64) * self.row_bytes).tolist()
        out = []
        for part in range(0, len(sizes), SPANS):  # Python ints for a part of the spans at a time
            out += map(os.pread, repeat(self.fd), sizes[part: part + SPANS], offsets[part: part + SPANS])
        if sum(map(len, out)) < sum(sizes):  # a read may return less than asked (Linux: at most ~2 GB), or the file is short
            out = [got if len(got) == size else self._read_fully(size, offset)
                   for got, size, offset in zip(out, sizes, offsets)]
        return out

    def _read_fully(self, size: int, offset: int) -> bytes:
        parts, done = [], 0
        while done < size:
            got = os.pread(self.fd, size - done, offset + done)
            if not got:
                raise UsageError(f"{self.path}: shorter than its header says; delete it to rebuild it")
            parts.append(got)
            done += len(got)
        return b"".join(parts)


def built_checked(work: Path, marker: Path, fingerprint: str, build) -> dict:
    """The record of the files ``build`` writes (it returns them, and what else the record holds), built once per
    ``fingerprint`` behind ``marker`` by whichever reader asks first, each checked against the record (bytes and
    SHA-256) at every open: one whose bytes changed is refused in one line naming ``rm <marker>``, not built again
    behind the reader's back."""

    def hashed():
        files, extra = build()
        return files, {**extra, "sha256": {f.relative_to(work).as_posix(): file_sha256(f) for f in files}}

    record = build_once(work, marker, fingerprint, hashed, verify=False)
    for name, file in record["files"].items():
        checked_file(work / name, {**file, "sha256": record["sha256"][name]}, f"rm {marker}")
    return record
