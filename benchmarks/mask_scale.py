"""pipeline.mask on synthetic pools of growing size: peak RSS, wall time and recall@k against exact search.

    flock /tmp/gist-bench.lock python -m benchmarks.mask_scale --sizes 10000000 1000000 3000000 --anchors 100000

For each pool size a work directory is written by benchmarks/synthetic_pool.py (float16 vectors, as
`pipeline.embed --dtype float16` writes them) under --root, pipeline.mask runs on it in a fresh process
(--index, --memory-budget; peak RSS is its VmHWM, benchmarks/peak_rss.py), then the candidates of
--sample anchors are compared with an exact search of the stored vectors (their own query and positive
excluded, as the stage excludes them), and the work directory is deleted. Wall time per million pool
texts, against the smallest size's, shows whether the stage stays linear in the pool.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import figure, measured, table
from gist_mining import workdir
from gist_mining.mining.index import parse_bytes, resolve_kind
from gist_mining.workdir import VectorStore

BLOCK = 1 << 17  # pool rows scored at a time by the exact search


def exact_top_k(work: Path, query_ids: np.ndarray, exclude: np.ndarray, k: int, pool_ids: np.ndarray) -> np.ndarray:
    """The ids of each query's k best texts of ``pool_ids`` by brute force over the stored matrix, block by block."""
    store = VectorStore(work)
    queries = store.get(query_ids)
    ids = np.load(work / workdir.VECTORS / "ids.npy")
    pool = np.isin(ids, pool_ids)
    matrix = np.load(store.path, mmap_mode="r")
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(ids), BLOCK):
        block_ids = ids[start: start + BLOCK]
        scores = queries @ np.asarray(matrix[start: start + BLOCK], dtype=np.float32).T
        skip = ~pool[start: start + BLOCK][None, :] | (block_ids[None, :, None] == exclude[:, None, :]).any(axis=2)
        scores[skip] = -np.inf
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, np.broadcast_to(block_ids, scores.shape)], axis=1)
        top = np.argpartition(-best_scores, min(k, best_scores.shape[1] - 1), axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(best_scores, top, 1), np.take_along_axis(best_ids, top, 1)
    return best_ids


def recall(work: Path, n_sample: int, k: int, pool_ids: np.ndarray | None = None) -> float:
    """recall@k of candidates/ on ``n_sample`` anchors against brute force over ``pool_ids`` (default: the index's)."""
    found = pl.read_parquet(work / workdir.CANDIDATES / "*.parquet").sample(n_sample, seed=0)
    exclude = found.select("query_id", "positive_id").to_numpy()
    pool_ids = np.load(work / workdir.POOL_IDS) if pool_ids is None else pool_ids
    exact = exact_top_k(work, found["query_id"].to_numpy(), exclude, k, pool_ids)
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(found["candidate_ids"].to_list(), exact)]))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--index", default="ivfpq", help="the same kind at every size, so that times compare")
    parser.add_argument("--memory-budget", default="8G")
    parser.add_argument("--sample", type=int, default=500, help="anchors whose recall is measured")
    parser.add_argument("--root", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    results = []
    header = ("pool", "index", "auto would pick", "write s", "peak RSS GiB", "mask s", "index build s",
              "s per 1M / smallest's", f"recall@{args.k}")

    def rows(smallest: dict | None) -> list[tuple]:
        """The table; the wall time per million texts against the smallest pool's (blank before the end)."""
        return [(r["size"], args.index, r["auto"], f"{r['write']:.0f}", f"{r['rss'] / 1024:.2f}", f"{r['seconds']:.0f}",
                 f"{r['built']:.0f}", f"{r['seconds'] / r['size'] / (smallest['seconds'] / smallest['size']):.2f}"
                 if smallest else "", f"{r['recall']:.3f}") for r in results]

    for size in args.sizes:  # any order: the largest first gets its figure soonest
        work = args.root / f"scale-{size}"
        made = measured(["-m", "benchmarks.synthetic_pool", "--work", work, "--pool", size, "--anchors", args.anchors,
                         "--dim", args.dim])
        run = measured(["-m", "pipeline.mask", "--work", work, "--index", args.index, "--k", args.k,
                        "--memory-budget", args.memory_budget])
        rec = recall(work, args.sample, args.k)
        built = json.loads((work / workdir.INDEX_MARKER).read_text())["seconds"]
        shutil.rmtree(work)
        results.append(dict(size=size, seconds=run["seconds"], rss=run["peak_rss_mib"], recall=rec, built=built,
                            write=made["seconds"], auto=resolve_kind("auto", size, args.dim, parse_bytes(args.memory_budget))))
        print(table(rows(None)[-1:], header), flush=True)
    print(f"\npipeline.mask, synthetic clustered {args.dim}-d float16 vectors, {args.anchors} anchors, k = {args.k}, "
          f"--memory-budget {args.memory_budget}; recall on {args.sample} anchors against exact search")
    results.sort(key=lambda r: r["size"])
    print(table(rows(results[0]), header))
    largest = results[-1]
    return [figure(f"mask peak RSS at {largest['size']} x {args.dim}", largest["rss"] / 1024, "<= 8", "GiB"),
            figure(f"mask recall@{args.k} at {largest['size']}", largest["recall"])]


if __name__ == "__main__":
    main()
