"""Mining as a grid through a local Ray on synthetic pools of growing size: peak RSS per worker, time, recall@k.

    flock /tmp/bench.lock python -m benchmarks.grid_scale --pools 1000000 2000000 4000000 --slice 1000000 \
        --anchors 2000 --shard-size 1000

For each pool size a work directory is written by benchmarks/synthetic_pool.py (float16 384-d vectors, as
`pipeline.embed --dtype float16` writes them), then `pipeline.mask --pool-slice-size SLICE --executor ray` runs
in this process on one local Ray (started once, 2 CPUs: two workers of one thread each). While it runs, every
Ray worker process (``ray::ShardWorker``) is sampled for its peak RSS (VmHWM, from /proc: it measures the worker
from outside, whatever the code does), and the cells' completion markers for their times: the cells are done
when the last marker is written, then one search task per anchor shard merges them. recall@k is measured on
--sample anchors against a brute-force search of the stored vectors (benchmarks/mask_scale.exact_top_k), and the
candidates' scores against the same brute force. The reference, measured in the same run: the single exact index
(`pipeline.mask --index flat`, a fresh local process, its VmHWM) on the smallest pool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import ROOT, figure, measured, table
from benchmarks.mask_scale import recall
from gist_mining import grid, workdir
from gist_mining.errors import UsageError
from gist_mining.workdir import VectorStore
from pipeline import mask

WORKER_TITLE = b"ray::ShardWorker"  # Ray names an actor's process after its class (``ray::ShardWorker.run`` in a task)


class WorkerPeaks(threading.Thread):
    """Samples every Ray worker process (its peak RSS, its CPU seconds, when it was first seen) and the cells'
    marker times until stopped. The cells' workers are those seen before the last cell was done (each step starts
    its own); their CPU seconds, unlike wall time, do not grow when other work shares the cores."""

    def __init__(self, cells: Path, every: float = 0.2):
        super().__init__(daemon=True)
        self.cells, self.every, self.workers, self.last_cell = cells, every, {}, None
        self.stopped = threading.Event()

    def run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stopped.wait(self.every):
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(WORKER_TITLE):
                        continue
                    status, stat = Path(f"/proc/{pid}/status").read_text(), Path(f"/proc/{pid}/stat").read_text()
                except OSError:  # ended meanwhile
                    continue
                hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
                cpu = sum(map(int, stat.rsplit(")", 1)[1].split()[11:13])) / tick  # utime + stime
                seen = self.workers.setdefault(pid, {"first": time.time(), "rss": 0.0, "cpu": 0.0})
                seen.update(rss=max(seen["rss"], hwm), cpu=max(seen["cpu"], cpu))
            for marker in self.cells.glob("_shard-*.done") if self.cells.is_dir() else []:
                try:
                    self.last_cell = max(self.last_cell or 0, marker.stat().st_mtime)
                except OSError:  # removed by the merge
                    pass

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.stopped.set()
        self.join()


def written_with(work: Path, recipe: dict) -> bool:
    """Whether ``work`` is a complete synthetic pool of this recipe (benchmarks/synthetic_pool.py's)."""
    try:
        model = workdir.checked_embed_manifest(work)["model"]
    except UsageError:  # missing, unfinished or damaged: written anew
        return False
    return {k: model.get(k) for k in recipe} == recipe


def score_error(work: Path, n_sample: int) -> float:
    """The largest difference between a written candidate score and the inner product of the stored vectors."""
    found = pl.read_parquet(work / workdir.CANDIDATES / "*.parquet").sample(n_sample, seed=0)
    store = VectorStore(work)
    worst = 0.0
    for query, ids, scores in found.select("query_id", "candidate_ids", "candidate_scores").iter_rows():
        exact = store.get(np.array(ids)) @ store.get(np.array([query]))[0]
        worst = max(worst, float(np.abs(exact - np.array(scores)).max()))
    return worst


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pools", type=int, nargs="+", default=[1_000_000, 2_000_000, 4_000_000])
    parser.add_argument("--slice", type=int, default=1_000_000, help="--pool-slice-size")
    parser.add_argument("--anchors", type=int, default=2000)
    parser.add_argument("--anchors-per-shard", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--sample", type=int, default=200, help="anchors whose recall is measured")
    parser.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs: one single-threaded worker each")
    parser.add_argument("--root", type=Path, default=Path("/tmp"))
    parser.add_argument("--keep-pools", action="store_true",
                        help="keep each pool's work directory, and reuse one an earlier run wrote with these arguments")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the single index (for pools whose flat index would not fit this machine)")
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    search = ["--k", args.k, "--anchors-per-shard", args.anchors_per_shard]
    header = ("pool", "cells", "pool write s", "vectors/ s", "grid s", "cells s", "merge+mine s", "CPU s per cell",
              "cell worker peak RSS GiB", "merge/mine worker GiB", "grid s per 1M / smallest's", f"recall@{args.k}",
              "max |score - exact|")
    results, reference = [], None
    for size in sorted(args.pools):
        work = args.root / f"grid-{size}"
        recipe = {"pool": size, "anchors": args.anchors, "dim": args.dim, "seed": 0}
        if args.keep_pools and written_with(work, recipe):
            made = {"seconds": None}  # written by an earlier run; its searches and lists go, its vectors/ stay
            workdir.remove_steps(work, "search", keep=(workdir.VECTORS,))
        else:
            made = measured(["-m", "benchmarks.synthetic_pool", "--work", work, "--pool", size, "--anchors", args.anchors,
                             "--dim", args.dim])
        if reference is None and not args.no_reference:  # the single exact index on the smallest pool, then it goes
            single = measured(["-m", "pipeline.mask", "--work", work, "--index", "flat", *search])
            reference = dict(size=size, seconds=single["seconds"], rss=single["peak_rss_mib"])
            workdir.remove_steps(work, "search")
        started = time.time()
        VectorStore(work), VectorStore(work, "query")  # vectors/, built from the shards as any search builds it
        vectors_s = time.time() - started
        started = time.time()
        with WorkerPeaks(work / grid.GRID) as peaks:
            mask.main([str(a) for a in ["--work", work, *search, "--pool-slice-size", args.slice, "--executor", "ray"]])
        seconds = time.time() - started
        plan = workdir.SearchPlan.from_json(workdir.read_plan(work, "search"))
        n_cells = plan.pool_slices * plan.anchor_shards
        cells_s = peaks.last_cell - started
        pool_ids = workdir.candidate_pool(work, False)
        rec, worst = recall(work, args.sample, args.k, pool_ids), score_error(work, args.sample)
        if not args.keep_pools:
            shutil.rmtree(work)
        cell_workers = [w for w in peaks.workers.values() if w["first"] <= peaks.last_cell]
        others = [w for w in peaks.workers.values() if w["first"] > peaks.last_cell]
        results.append(dict(size=size, cells=n_cells, write=made["seconds"], vectors=vectors_s, seconds=seconds,
                            cells_s=cells_s, cpu_per_cell=sum(w["cpu"] for w in cell_workers) / n_cells,
                            rss=max(w["rss"] for w in cell_workers), merge_rss=max(w["rss"] for w in others),
                            recall=rec, worst=worst))
        print(table(rows(results, None), header), flush=True)
    print(f"\npipeline.mask --pool-slice-size {args.slice} --executor ray (local Ray, {args.cpus} CPUs), synthetic "
          f"clustered {args.dim}-d float16 vectors, {args.anchors} anchors in shards of {args.anchors_per_shard}, k = {args.k}; "
          f"recall and scores on {args.sample} anchors against brute force")
    print(table(rows(results, results[0]), header))
    if reference:
        print(f"\nreference, the single exact index (--index flat, one process) on the {reference['size']} pool: "
              f"{reference['seconds']:.0f} s, peak RSS {reference['rss'] / 1024:.2f} GiB; the grid on it: "
              f"{results[0]['seconds'] / reference['seconds']:.2f}x the time, its workers "
              f"{results[0]['rss'] / reference['rss']:.2f}x the peak RSS")
    largest = results[-1]
    return [figure(f"grid cell worker peak RSS, {largest['size']} / {results[0]['size']} pool",
                   largest["rss"] / results[0]["rss"], "~1 (flat)", "x"),
            figure(f"grid recall@{args.k} at {largest['size']}", largest["recall"], "1 (exact)")]


def rows(results: list[dict], smallest: dict | None) -> list[tuple]:
    """The table; the wall time per million texts against the smallest pool's (blank before the end)."""
    return [(r["size"], r["cells"], "reused" if r["write"] is None else f"{r['write']:.0f}", f"{r['vectors']:.0f}",
             f"{r['seconds']:.0f}", f"{r['cells_s']:.0f}",
             f"{r['seconds'] - r['cells_s']:.0f}", f"{r['cpu_per_cell']:.1f}", f"{r['rss'] / 1024:.2f}",
             f"{r['merge_rss'] / 1024:.2f}",
             f"{r['seconds'] / r['size'] / (smallest['seconds'] / smallest['size']):.2f}" if smallest else "",
             f"{r['recall']:.4f}", f"{r['worst']:.1e}") for r in results]


if __name__ == "__main__":
    main()
