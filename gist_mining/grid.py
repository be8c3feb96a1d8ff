"""Mining as a grid: a pool larger than any one machine's memory, searched in slices.

    python -m pipeline.mask --work runs/big --pool-slice-size 5000000 [--executor ray]

The pool (``workdir.candidate_pool``, in texts.parquet's order) is cut into slices of ``pool_slice_size`` texts.
Cell (s, j) searches anchor shard s against slice j exactly (an IndexFlatIP of the slice's stored vectors,
``mining.PoolSearch``: the anchor's exclusions skipped, its own top-k kept with their exact scores) and writes
``index/grid/shard-NNNNN.parquet`` with its completion marker, cell number ``s * n_slices + j``; a cell's memory
is its slice's vectors and a chunk of anchors, never the pool. Then the search step, one task per anchor shard,
takes each anchor's best k of its cells' lists (``GridLists``, ``mining.merge_candidates``) where a single index
would search, and writes the same candidates/ shard: the best k of the union of the slices' best k lists are the
best k of the pool, scored by the same inner products. The mining rules then run on candidates/ as always.

A cell's list is needed only until its anchor shard is searched: cells of done shards are not redone (``Cells``)
and are deleted once the search step's markers say so. Every pending cell is searched before the first merge,
so the grid's disk peaks at the lists of every anchor shard left to search (each cell: anchors x k x 12 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.lists import PAD_ID, padded, ragged
from gist_mining.mining.index import build_index
from gist_mining.mining.search import PoolSearch, merge_candidates
from gist_mining.storage import AtomicParquetWriter
from gist_mining.workdir import VectorStore, read_anchors

GRID = f"{workdir.INDEX}/grid"  # inside index/: the search step owns it and a new search plan removes it
CELL_SCHEMA = pa.schema([("anchor_id", pa.int64()), ("query_id", pa.int64()),
                         ("candidate_ids", pa.list_(pa.int64())), ("candidate_scores", pa.list_(pa.float32()))])


class Cells(workdir.Shards):
    """The grid's cells: cell c is anchor shard ``c // n_slices`` x pool slice ``c % n_slices`` (the search plan's
    ``pool_slices``). Only the cells of the anchor shards in ``needed`` (not yet searched) are ever pending."""

    def __init__(self, work, plan: workdir.SearchPlan, needed: list[int]):
        self.n_slices, self.needed = plan.pool_slices, set(needed)
        self.command = plan.command  # what rebuilds a cell that does not match its marker
        super().__init__(work, GRID, plan.anchor_shards * self.n_slices, plan.fingerprint)

    def of_shard(self, s: int) -> range:
        return range(s * self.n_slices, (s + 1) * self.n_slices)

    def pending(self, indices: list[int], verify: bool = True) -> list[int]:
        return super().pending([c for c in indices if c // self.n_slices in self.needed], verify)

    def remove_searched(self, candidates: workdir.Shards) -> None:
        """The cells of the anchor shards whose candidates are marked done: they are not read again. Only after
        the marker, so that a search task retried after a crash still finds its cells."""
        searched = set(range(candidates.n)) - set(candidates.pending(list(range(candidates.n)), verify=False))
        for c in (c for s in sorted(searched) for c in self.of_shard(s)):
            self.marker(c).unlink(missing_ok=True)
            self.path(c).unlink(missing_ok=True)


@dataclass
class CellStep:
    """The grid's step (``gist_mining.executor.ShardStep``): cell c's anchors searched against its slice."""

    shards: Cells
    plan: workdir.SearchPlan
    chunk: int  # anchors searched at a time: the search step's, so each query's scores come out bit for bit equal
    name: str = "grid"

    def open(self) -> tuple:
        work = self.shards.work
        anchors, exclusions = workdir.anchor_exclusions(work)
        pool_ids = workdir.candidate_pool(work, self.plan.include_queries)
        return VectorStore(work), VectorStore(work, "query"), pool_ids, anchors, exclusions

    def run(self, state: tuple, c: int) -> None:
        store, query_store, pool_ids, anchors, exclusions = state
        s, j = divmod(c, self.shards.n_slices)
        size, k = self.plan.pool_slice_size, self.plan.k
        slice_ids = pool_ids[j * size: (j + 1) * size]
        find = PoolSearch(build_index(store.view(slice_ids), "flat", k), slice_ids, None, k)
        part = read_anchors(anchors, exclusions, s * self.plan.shard_size, self.plan.shard_size)
        with AtomicParquetWriter(self.shards.path(c), CELL_SCHEMA) as out:
            for start in range(0, part.height, self.chunk):
                chunk = part.slice(start, self.chunk)
                query_ids = chunk["query_id"].to_numpy()
                ids, scores = find(query_store.get(query_ids), padded(chunk["exclude_ids"].to_arrow(), PAD_ID, np.int64))
                out.write(pa.table({"anchor_id": chunk["anchor_id"].to_arrow(), "query_id": chunk["query_id"].to_arrow(),
                                    "candidate_ids": ragged(ids, ids != PAD_ID, pa.int64()),
                                    "candidate_scores": ragged(scores, ids != PAD_ID, pa.float32())}, schema=CELL_SCHEMA))

    def close(self, state: tuple) -> None:
        pass


class GridLists:
    """The search step's ``find`` over the grid: per chunk of an anchor shard, each anchor's best k of its cells'
    lists. ``load(s)`` before shard s's chunks, which must come in order, ``chunk`` anchors at a time."""

    def __init__(self, cells: Cells, k: int, chunk: int):
        self.cells, self.k, self.chunk, self.readers = cells, k, chunk, []

    def load(self, s: int) -> None:
        for c in self.cells.of_shard(s):
            workdir.checked_file(self.cells.path(c), self.cells.record(c), self.cells.command)
        self.readers = [pq.ParquetFile(self.cells.path(c)).iter_batches(batch_size=self.chunk)
                        for c in self.cells.of_shard(s)]

    def __call__(self, query_ids: np.ndarray, _queries, _exclude) -> tuple[np.ndarray, np.ndarray]:
        lists = []
        for reader in self.readers:
            batch = next(reader)
            if not np.array_equal(batch.column("query_id").to_numpy(), query_ids):
                raise UsageError(f"{self.cells.work / GRID}: a cell's anchors are not its shard's; rerun with --overwrite")
            lists.append((padded(batch.column("candidate_ids"), PAD_ID, np.int64),
                          padded(batch.column("candidate_scores"), -np.inf, np.float32)))
        return merge_candidates(lists, self.k)
