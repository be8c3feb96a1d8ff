"""FAISS indexes over L2-normalised guide embeddings (inner product = cosine), chosen by pool size and memory:
their kinds, memory plan, building, search parameters, saving and mapped loading."""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from gist_mining.errors import UsageError
from gist_mining.settings import parse_bytes  # noqa: F401  (gist_mining.mining's name for it)
from gist_mining.storage import commit, tmp_name

# ``auto`` is exact (IndexFlatIP) up to AUTO_EXACT_MAX vectors and HNSW above, as long as the index takes at
# most half the memory budget; past that, HNSW over 8-bit scalar-quantised vectors, then IVF-PQ (bytes per
# vector in ``bytes_per_vector``). The other half of the budget holds the stage's id arrays and a chunk's
# working set. Measured by benchmarks/index_recall.py (WordNet glosses, 384-d, 2000 queries, k = 100, 2 CPU
# cores, 2026-11-25): at 100k vectors exact search runs 3467 queries/s and HNSW 3361 with recall@100 0.952
# (IVF, nprobe 32: 0.784), so below a few hundred thousand vectors approximation buys no speed and loses 5% of
# the true neighbours. At 300k exact search answers about a third of that (it reads the whole pool per query),
# while mpnet embeds ~130 texts/s on the same cores: the search is a small share of the mining cost. Above
# that, exact search grows as anchors x pool and HNSW takes over. Whatever the index, the mask stage scores
# every candidate from the stored vectors; quantised indexes are asked for APPROXIMATE_DEPTH x k candidates,
# which are scored exactly and cut to k.

KINDS = ("flat", "ivf", "hnsw", "hnswsq", "ivfpq", "auto")
AUTO_EXACT_MAX = 300_000
HNSW_M = 32
PQ_DIMS_PER_BYTE = 8  # IVF-PQ: one 8-bit code per 8 dimensions (48 bytes for a 384-d vector)
APPROXIMATE_DEPTH = 3  # quantised scores rank roughly: ask for 3k, score them exactly, keep the best k
# Training points: k-means over 256 per list for IVF; fewer for IVF-PQ, whose lists only route the search
# (64 per list keeps its k-means to minutes at 10M vectors on 2 cores); SQ8 learns each dimension's range.
# The PQ codebooks (256 codes per sub-vector) want >= 39 x 256 points.
TRAIN_SAMPLE = {"ivf": lambda index: 256 * index.nlist, "ivfpq": lambda index: max(64 * index.nlist, 39 * 256),
                "hnswsq": lambda index: 1 << 18}
# IVF-PQ routes vectors to its lists through HNSW over the list centroids, not a flat scan: at 3162 lists
# (10M vectors) assigning a vector costs a third, and 99% land in the same list.
ADD_BATCH = 65_536  # vectors read from the store and added at a time
# What the stage holds besides the index, per pool vector: pool ids, and the store's ids, order and sorted ids.
STAGE_BYTES_PER_VECTOR = 4 * 8


def bytes_per_vector(kind: str, dim: int) -> int:
    """The index's memory per vector, as FAISS lays it out (checked against serialised sizes by the tests)."""
    links = HNSW_M * 2 * 4 + 16  # level-0 neighbours (2M int32); upper levels, level and offset, on average
    return {"flat": 4 * dim, "ivf": 4 * dim + 8, "hnsw": 4 * dim + links, "hnswsq": dim + links,
            "ivfpq": max(1, dim // PQ_DIMS_PER_BYTE) + 8}[kind]


def resolve_kind(kind: str, n_vectors: int, dim: int, budget: int) -> str:
    """``auto``: the most exact index whose memory fits half of ``budget`` bytes (see the module note)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    order = ("flat", "hnsw", "hnswsq", "ivfpq") if n_vectors <= AUTO_EXACT_MAX else ("hnsw", "hnswsq", "ivfpq")
    for choice in order:
        if (bytes_per_vector(choice, dim) + STAGE_BYTES_PER_VECTOR) * n_vectors <= budget // 2:
            return choice
    need = 2 * (bytes_per_vector("ivfpq", dim) + STAGE_BYTES_PER_VECTOR) * n_vectors
    raise UsageError(f"a pool of {n_vectors} vectors needs --memory-budget of at least {need / 2**30:.1f}G "
                     "(IVF-PQ, the smallest index)")


def _nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list


def empty_index(kind: str, n: int, dim: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, _nlist(n), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnswsq":
        return faiss.index_factory(dim, f"HNSW{HNSW_M},SQ8", faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        nbits = 8 if n >= 39 * 256 else 4  # a codebook of 2^nbits centroids, trained on >= 39 points each
        nlist = max(1, min(int(math.sqrt(n)), n // 39))
        index = faiss.index_factory(dim, f"IVF{nlist}_HNSW{HNSW_M},PQ{max(1, dim // PQ_DIMS_PER_BYTE)}x{nbits}",
                                    faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # Hamming filtering is never used; its training costs minutes
        return index
    raise ValueError(f"unknown index kind {kind!r}")


def search_depth(index: faiss.Index) -> int:
    """How many times k candidates to ask of ``index``: more where its scores are quantised."""
    return APPROXIMATE_DEPTH if isinstance(index, (faiss.IndexHNSWSQ, faiss.IndexIVFPQ)) else 1


def set_search_parameters(index: faiss.Index, k: int) -> faiss.Index:
    if hasattr(index, "hnsw"):  # the search asks for depth x k results, so the beam is at least twice that
        index.hnsw.efSearch = max(128, 2 * k * search_depth(index))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, 32)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):  # the lists to probe come from an HNSW search: a beam of 2 x nprobe
            quantizer.hnsw.efSearch = 2 * ivf.nprobe
    return index


def train_lists(ivf: faiss.IndexIVF, x: np.ndarray) -> None:
    """IVF-PQ's lists: k-means with faiss's IVF settings, then the centroids into its HNSW quantizer on one
    thread, as a graph built on several depends on their timing (3162 centroids: ~1 s)."""
    clustering = faiss.Clustering(ivf.d, ivf.nlist, ivf.cp)
    clustering.train(x, faiss.IndexFlat(ivf.d, ivf.metric_type))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        ivf.quantizer.add(faiss.vector_to_array(clustering.centroids).reshape(ivf.nlist, ivf.d))
    finally:
        faiss.omp_set_num_threads(threads)


def build_index(vectors, kind: str, k: int, seed: int = 0) -> faiss.Index:
    """``vectors``: an (n, d) array, or anything indexed like one (rows read on demand; ``shape``)."""
    n, dim = vectors.shape
    index = empty_index(kind, n, dim)
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, TRAIN_SAMPLE[kind](index)), replace=False))
        x = np.ascontiguousarray(vectors[sample], dtype=np.float32)
        if kind == "ivfpq":
            train_lists(faiss.extract_index_ivf(index), x)  # then index.train only trains the PQ codebooks
        index.train(x)
    add_vectors(index, vectors)
    return set_search_parameters(index, k)


def add_vectors(index: faiss.Index, vectors) -> None:
    """``vectors`` (an array, or rows read on demand) into a trained index, ADD_BATCH at a time."""
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(np.ascontiguousarray(vectors[start: start + ADD_BATCH], dtype=np.float32))


def save_index(index: faiss.Index, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    faiss.write_index(index, str(tmp))
    commit(tmp, path)


def load_index(path: Path, k: int) -> faiss.Index:
    """Memory-mapped, not copied: shard processes on one machine share the file's pages (the page cache)
    instead of each holding the index. IO_FLAG_MMAP_IFC maps the codes, graphs and inverted lists of every
    kind in KINDS (faiss 1.15; IO_FLAG_MMAP maps only IVF lists). The file is replaced by rename, never
    rewritten in place, so a mapping stays valid."""
    return set_search_parameters(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC), k)
