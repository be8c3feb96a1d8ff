"""Recall@k and speed of FAISS's approximate indexes against exact search, at growing pool sizes.

    python -m benchmarks.index_recall --sizes 10000 30000 100000 --queries 2000 --k 100

The pool is WordNet glosses, the queries are usage examples and lemma lists of the same synsets, all
embedded by pipeline.embed (all-MiniLM-L6-v2 by default: an mpnet pass over 100k texts takes an hour on
2 CPU cores, and recall depends on how the vectors spread, which two sentence encoders share far more
than either shares with random data). The work directory is kept under runs/ and reused on the next run.
For each pool size: build seconds, queries per second and recall@k (share of the exact top k found) of
flat (the reference), IVF and HNSW as gist_mining.mining builds them. This is what AUTO_EXACT_MAX rests on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import ROOT, figure, table, wordnet_pairs
from gist_mining import workdir
from gist_mining.mining.index import build_index
from gist_mining.workdir import VectorStore
from pipeline import embed


def embedded_wordnet(model: str, n_queries: int, n_pool: int) -> Path:
    work = ROOT / "runs" / f"bench-wordnet-{model}-{n_queries}-{n_pool}"
    pairs, corpus = wordnet_pairs(work.with_name(work.name + "-input"), n_queries, n_pool)
    embed.main(["--input", str(pairs), "--corpus", str(corpus), "--work", str(work), "--guide", model])
    return work


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args(argv)
    work = embedded_wordnet(args.model, args.queries, max(args.sizes))
    texts = workdir.read_table(work, workdir.TEXTS, ["text_id", "is_query", "is_document"])
    store = VectorStore(work)
    queries = store.get(texts.filter(pl.col("is_query"))["text_id"].to_numpy())
    documents = texts.filter(pl.col("is_document") & ~pl.col("is_query"))["text_id"].to_numpy()
    documents = store.get(np.random.default_rng(0).permutation(documents))
    rows, figures = [], []
    for size in args.sizes:
        pool = documents[:size]
        results = {}
        for kind in ("flat", "ivf", "hnsw"):
            started = time.perf_counter()
            index = build_index(pool, kind, args.k)
            built = time.perf_counter() - started
            started = time.perf_counter()
            _, found = index.search(queries, args.k)
            results[kind] = found
            searched = time.perf_counter() - started
            recall = np.mean([len(np.intersect1d(a, b)) / args.k for a, b in zip(found, results["flat"])])
            rows.append((len(pool), kind, f"{built:.2f}", f"{len(queries) / searched:.0f}", f"{recall:.4f}"))
            if kind != "flat":
                figures.append(figure(f"{kind} recall@{args.k}, pool {len(pool)}", recall, "auto uses flat below 300k"))
    print(f"\n{args.model} embeddings of WordNet: {len(queries)} queries, k = {args.k}")
    print(table(rows, ("pool", "index", "build s", "queries/s", f"recall@{args.k}")))
    return figures


if __name__ == "__main__":
    main()
