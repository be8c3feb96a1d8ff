"""The search step: each anchor's candidates from the pool (the FAISS index built once behind its marker, or the grid's
cells with --pool-slice-size, or an earlier run's lists with --update-from), with exact guide scores, into
candidates/."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from gist_mining import given_negatives, grid, rescore, update, workdir
from gist_mining.executor import ExecutorSettings, run_here, run_step, share
from gist_mining.lists import PAD_ID, padded, ragged
from gist_mining.mask.settings import chunk_size
from gist_mining.mining import CANDIDATE_SCHEMA, SEARCHED_SCHEMA
from gist_mining.mining.index import build_index, load_index, save_index, search_depth
from gist_mining.mining.search import PoolSearch
from gist_mining.storage import AtomicParquetWriter, write_npy_atomic
from gist_mining.workdir import VectorStore, read_anchors


def prepare_index(work: Path, store: VectorStore, plan: workdir.SearchPlan, earlier: update.EarlierCandidates | None):
    """Built once per search plan, behind a marker (from the earlier run's index where it can be: ``earlier``);
    shard processes and resumed runs load it."""
    index_path, ids_path, marker = workdir.index_files(work)

    def build():
        started = time.perf_counter()
        extended = earlier.extended_index(store) if earlier else None
        if extended is None:
            pool_ids = workdir.candidate_pool(work, plan.include_queries)
            index = build_index(store.view(pool_ids), plan.index, plan.k)
        else:
            index, pool_ids = extended
        save_index(index, index_path)
        del index  # the copy loaded below is the one searched
        write_npy_atomic(pool_ids, ids_path)
        return [index_path, ids_path], {"kind": plan.index, "vectors": len(pool_ids),
                                        "seconds": round(time.perf_counter() - started, 2),
                                        "extended_from": str(earlier.earlier) if extended else None}

    workdir.build_once(work, marker, plan.fingerprint, build)
    return load_index(index_path, plan.k), np.load(ids_path, allow_pickle=False)


def search_chunk(anchors: pl.DataFrame, store: VectorStore, query_store: VectorStore, find) -> pa.Table:
    """Every score is query role (the anchor's query) x document role (positive, given negatives, the pool).
    ``find(query_ids, query_vectors, exclude)``: the anchors' candidates (ids and scores, as search_candidates)."""
    queries = query_store.get(anchors["query_id"].to_numpy())
    positive_scores = np.einsum("nd,nd->n", queries, store.get(anchors["positive_id"].to_numpy()))
    given = padded(anchors["negative_ids"].to_arrow(), PAD_ID, np.int64)
    given_vectors = store.get(given[given != PAD_ID]) if given.size else np.zeros((0, queries.shape[1]), np.float32)
    given_scores = np.full(given.shape, -np.inf, dtype=np.float32)
    given_scores[given != PAD_ID] = np.einsum("nd,nd->n", np.repeat(queries, (given != PAD_ID).sum(1), axis=0),
                                             given_vectors)
    exclude = padded(anchors["exclude_ids"].to_arrow(), PAD_ID, np.int64)
    positives = exclude[:, 1:]  # the query, then each of its positives (workdir.anchor_exclusions)
    every_positive = np.full(positives.shape, np.inf, dtype=np.float32)
    every_positive[positives != PAD_ID] = np.einsum("nd,nd->n", np.repeat(queries, (positives != PAD_ID).sum(1), axis=0),
                                                    store.get(positives[positives != PAD_ID]))
    ids, scores = find(anchors["query_id"].to_numpy(), queries, exclude)
    return pa.table({
        "anchor_id": anchors["anchor_id"].to_arrow(), "query_id": anchors["query_id"].to_arrow(),
        "positive_id": anchors["positive_id"].to_arrow(), "task": anchors["task"].to_arrow(),
        "positive_score": pa.array(positive_scores, type=pa.float32()),
        "candidate_ids": ragged(ids, ids != PAD_ID, pa.int64()),
        "candidate_scores": ragged(scores, ids != PAD_ID, pa.float32()),
        "given_negative_ids": anchors["negative_ids"].to_arrow(),
        "given_negative_scores": ragged(given_scores, given != PAD_ID, pa.float32()),
        "weakest_positive_score": pa.array(every_positive.min(axis=1), type=pa.float32()),
    }, schema=SEARCHED_SCHEMA)


@dataclass
class SearchStep:
    """The search step (``gist_mining.executor.ShardStep``): candidates/ shard s holds anchors
    s * shard_size .. (s + 1) * shard_size, searched against the index of the plan's pool (built once, behind its
    marker, by whichever worker opens first). ``loaded_rescorer``: the driver's cross-encoder, reused by a local
    executor and never pickled."""

    shards: workdir.Shards
    plan: workdir.SearchPlan
    rescore: rescore.RescoreSettings | None = None  # None: the candidates carry no cross-encoder scores
    earlier_files: list[Path] | None = None  # --update-from: the earlier run's checked candidates
    loaded_rescorer: rescore.Rescorer | None = field(default=None, repr=False, compare=False)
    name: str = "search"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "loaded_rescorer": None}

    def open(self) -> SearchWorker:
        work, plan = self.shards.work, self.plan
        store, query_store = VectorStore(work), VectorStore(work, "query")
        earlier = update.EarlierCandidates(self.earlier_files, work, plan, store) if self.earlier_files else None
        if earlier:
            earlier.split_by_shard(work, plan)
        lists = None
        if not given_negatives.searches_pool(plan):  # --negatives-from given: the given negatives alone, no index
            find, chunk = given_negatives.no_candidates, chunk_size(plan.k, 1, store.dimension)
        elif plan.pool_slice_size:  # the grid's cells hold each slice's lists: no index of the pool
            chunk = chunk_size(plan.k, 1, store.dimension)
            find = lists = grid.GridLists(grid.Cells(work, plan, needed=[]), plan.k, chunk)
        else:
            index, pool_ids = prepare_index(work, store, plan, earlier)  # the pool in the document role, queries too
            # Only an approximate index needs the pool's vectors again, read row by row, to score its finds exactly.
            search_all = PoolSearch(index, pool_ids, None if plan.index == "flat" else store.view(pool_ids), plan.k)
            find = partial(earlier.find, search_all=search_all) if earlier else \
                lambda _query_ids, queries, exclude: search_all(queries, exclude)
            chunk = chunk_size(plan.k, search_depth(index), store.dimension)
        rescorer = self.loaded_rescorer or (rescore.Rescorer(work, self.rescore) if self.rescore else None)
        path, exclusions = workdir.anchor_exclusions(work)
        return SearchWorker(store, query_store, find, earlier, lists, rescorer, path, exclusions, chunk)

    def run(self, worker: SearchWorker, s: int) -> None:
        size = self.plan.shard_size
        part = read_anchors(worker.anchors, worker.exclusions, s * size, size)  # one shard's anchors at a time
        if worker.earlier:
            worker.earlier.load(part, s, self.shards.work)
        if worker.grid:
            worker.grid.load(s)
        with AtomicParquetWriter(self.shards.path(s), CANDIDATE_SCHEMA) as out, \
                tqdm(total=part.height, unit="anchor", desc=f"search shard {s}", leave=False) as progress:
            for start in range(0, part.height, worker.chunk):
                chunk = part.slice(start, worker.chunk)
                searched = search_chunk(chunk, worker.store, worker.query_store, worker.find)
                out.write(rescore.with_rescores(searched, worker.rescorer))
                progress.update(chunk.height)

    def close(self, worker: SearchWorker) -> None:
        earlier = worker.earlier
        if earlier:
            print(f"mask: {earlier.reused} anchors kept their candidates from {earlier.earlier}, searched against the "
                  f"{len(earlier.new_texts)} texts new to the pool; {earlier.searched} searched in full", file=sys.stderr)


@dataclass
class SearchWorker:
    store: VectorStore
    query_store: VectorStore
    find: object  # search_chunk's ``find``
    earlier: update.EarlierCandidates | None
    grid: grid.GridLists | None
    rescorer: rescore.Rescorer | None
    anchors: Path
    exclusions: pl.DataFrame
    chunk: int  # anchors searched at a time


def search_cells(search: workdir.SearchPlan, candidates: workdir.Shards, executor: ExecutorSettings, dimension: int) -> None:
    """The grid's cells of the anchor shards left to search: on Ray all of them, locally those of this process's
    share, done by this process (the search of a shard reads all its cells)."""
    own = list(range(candidates.n)) if executor.executor == "ray" else share(executor, candidates.n, "mask")
    cells = grid.Cells(candidates.work, search, needed=candidates.pending(own))
    VectorStore(candidates.work), VectorStore(candidates.work, "query")  # built here once, not by each worker at once
    step = grid.CellStep(cells, search, chunk_size(search.k, 1, dimension))  # the search step's chunks
    print(f"grid: {len(cells.needed)} anchor shard(s) x {cells.n_slices} pool slice(s) to search", file=sys.stderr)
    if executor.executor == "ray":
        run_step(step, executor)
    else:  # this process's share is taken above: it does every cell of its anchor shards
        run_here(step, list(range(cells.n)))
