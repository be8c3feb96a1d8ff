"""FAISS indexes over L2-normalised guide embeddings (inner product = cosine).

``auto`` is exact (IndexFlatIP) up to AUTO_EXACT_MAX vectors and HNSW above. Measured by
benchmarks/index_recall.py (WordNet glosses, 384-d, 2000 queries, k = 100, 2 CPU cores): at 100k vectors
exact search runs 1192 queries/s and HNSW 1419 with recall@100 0.947 (IVF, nprobe 32: 0.784), so below a
few hundred thousand vectors approximation buys little speed and loses 5% of the true neighbours. At 300k
exact search still answers ~400 queries/s, while the guide embeds ~30 texts/s on the same cores: the
search is a small share of the mining cost. Above that, exact search grows as anchors x pool and HNSW
takes over.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from gist_mining.storage import commit, tmp_name

KINDS = ("flat", "ivf", "hnsw", "auto")
AUTO_EXACT_MAX = 300_000
HNSW_M = 32


def resolve_kind(kind: str, n_vectors: int) -> str:
    if kind == "auto":
        return "flat" if n_vectors <= AUTO_EXACT_MAX else "hnsw"
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    return kind


def build_index(vectors: np.ndarray, kind: str, k: int, seed: int = 0) -> faiss.Index:
    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).choice(n, size=min(n, 256 * nlist), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = min(nlist, 32)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(128, 2 * k)
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(vectors)
    return index


def save_index(index: faiss.Index, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    faiss.write_index(index, str(tmp))
    commit(tmp, path)


def load_index(path: Path, k: int) -> faiss.Index:
    index = faiss.read_index(str(path))
    if isinstance(index, faiss.IndexHNSWFlat):
        index.hnsw.efSearch = max(128, 2 * k)
    return index
