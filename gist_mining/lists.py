"""Lists of ids per row, the one shape every stage passes around: Arrow list columns <-> padded matrices (mining,
a chunk of anchors at a time) and ``Ragged`` (training, every row's ids end to end as numpy)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

# Mining: a chunk of anchors crosses each step once each way: the search and select() read its list columns into
# padded matrices (padded), work on those, and write list columns built against the schema (ragged).
# The rescorer (gist_mining.rescore) works on the lists themselves.

PAD_ID = -1  # fills ragged id lists out to a matrix; a real id is -1 with probability 2**-64


def padded(lists: pa.Array, fill, dtype) -> np.ndarray:
    """A list column as an (n, longest) matrix, short rows filled with ``fill``."""
    lists = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = lists.offsets.to_numpy()
    offsets = offsets - offsets[0]
    lengths = np.diff(offsets)
    values = lists.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    out = np.full((len(lengths), int(lengths.max(initial=0))), fill, dtype=dtype)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(values)) - np.repeat(offsets[:-1], lengths)
    out[rows, cols] = values
    return out


def ragged(matrix: np.ndarray, keep: np.ndarray, arrow_type) -> pa.ListArray:
    """The kept entries of each row, in column order, as a list column."""
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix[keep], type=arrow_type))


class Ragged:
    """A list of ids per row, as two numpy arrays: every row's ids end to end, and where each row starts."""

    def __init__(self, starts: np.ndarray, values: np.ndarray):
        self.starts, self.values = starts, values

    def __len__(self) -> int:
        return len(self.starts) - 1

    def row(self, r: int) -> np.ndarray:
        return self.values[self.starts[r]: self.starts[r + 1]]

    def first(self, rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Each of ``rows``' first ``n`` ids as an (len(rows), n) matrix, PAD_ID where a row has fewer; which rows
        have n."""
        has_n = self.starts[rows + 1] - self.starts[rows] >= n
        if not len(self.values):
            return np.full((len(rows), n), PAD_ID, np.int64), has_n
        take = np.minimum(self.starts[rows, None] + np.arange(n), len(self.values) - 1)
        return np.where(has_n[:, None], self.values[take], PAD_ID), has_n
