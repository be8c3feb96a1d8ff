"""Each anchor's candidates from an index: the top k pool texts less its exclusions, scored exactly from the stored
vectors (``PoolSearch``), and candidate lists merged across pool slices or runs (``merge_candidates``)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from gist_mining.lists import PAD_ID
from gist_mining.mining.index import search_depth


def search_candidates(index, query_vectors: np.ndarray, exclude: np.ndarray, pool_ids: np.ndarray,
                      pool_vectors, k: int, depth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k pool texts per query, none of its ``exclude`` ids (n, e; PAD_ID-padded), scored exactly.

    An exact index's distances are the inner products of the stored vectors already; for an approximate
    one, pass ``pool_vectors`` (an array, or rows read on demand: ``workdir.StoredRows``) and the scores of
    the ``depth`` x k nearest by the index are recomputed from them before the best k are kept.
    Returns ids (n, k) padded with PAD_ID and scores (n, k) padded with -inf, sorted by score descending.
    """
    search_k = min(depth * k + exclude.shape[1], len(pool_ids))
    distances, rows = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), search_k)
    ids = np.where(rows >= 0, pool_ids[np.maximum(rows, 0)], PAD_ID)
    keep = (rows >= 0) & ~(ids[:, :, None] == exclude[:, None, :]).any(axis=2)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :depth * k]  # kept entries first, in search order
    rows, keep, ids = (np.take_along_axis(m, first, axis=1) for m in (rows, keep, ids))
    if pool_vectors is None:
        scores = np.take_along_axis(distances, first, axis=1)
    else:
        scores = np.einsum("nd,nkd->nk", query_vectors, pool_vectors[np.maximum(rows, 0)], dtype=np.float32)
    scores = np.where(keep, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(ids, order, axis=1), PAD_ID), \
        np.take_along_axis(scores, order, axis=1)


@dataclass(frozen=True)
class PoolSearch:
    """``search_candidates`` over one index of pool texts: ``pool_vectors`` is None when its scores are exact."""

    index: faiss.Index
    pool_ids: np.ndarray
    pool_vectors: object
    k: int

    def __call__(self, query_vectors: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return search_candidates(self.index, query_vectors, exclude, self.pool_ids, self.pool_vectors, self.k,
                                 search_depth(self.index))


def merge_candidates(lists: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several candidate lists per row, as ``search_candidates`` returns them: (ids, scores) pairs
    of n rows each, padded with PAD_ID and -inf, no id in two lists. Ties keep the order of ``lists``."""
    ids = np.concatenate([i for i, _ in lists], axis=1)
    scores = np.concatenate([s for _, s in lists], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
