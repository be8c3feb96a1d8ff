"""The mask stage's search settings (``SearchSettings``: what decides candidates/; its fields generate pipeline.mask's
search options) and the chunk every step works in."""

from __future__ import annotations

from dataclasses import dataclass

from gist_mining.mining.index import KINDS
from gist_mining.settings import option

CHUNK = 1024  # anchors searched and selected at a time: bounds memory whatever the number of anchors
# A search chunk's working set: its candidates' vectors (float32) read from the store and scored exactly. Fewer
# anchors per chunk when k, the index's search depth or the dimension is large; results do not depend on it.
CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class SearchSettings:
    """What decides candidates/: --refilter takes these from the stored candidates, never from the command."""

    k: int = option(100, "candidates kept per anchor")
    index: str = option("auto", "exact while it fits the memory budget, then HNSW, HNSW over 8-bit vectors, IVF-PQ; "
                                "approximate finds are always scored exactly from the stored vectors", choices=KINDS)
    memory_budget: str = option("8G", "memory --index auto may plan for, e.g. 8G or 512M "
                                      "(gist_mining.mining.resolve_kind)")
    include_queries: bool = option(False, "other anchors' queries are candidates too (symmetric tasks, e.g. "
                                          "paraphrases)")
    # Stored as shard_size in plans.
    shard_size: int = option(100_000, "anchors per shard", flag="--anchors-per-shard")
    pool_slice_size: int | None = option(None, "search the pool in slices of this many texts, each exactly, one task "
                                               "per anchor shard and slice, then merge: memory per task bounded by the "
                                               "slice (gist_mining.grid)", type=int)


def chunk_size(k: int, depth: int, dim: int) -> int:
    return max(1, min(CHUNK, CHUNK_BYTES // (depth * k * dim * 4)))
