"""The mask stage's peak memory when the anchors grow 10x over the same candidate pool (target: within 10%).

    python -m benchmarks.mask_memory --anchors 1000 --growth 10 --pool 20000

Two work directories over WordNet (gloss corpus of --pool texts; pairs whose positives are among those
glosses, so the pool is the same in both): --anchors pairs and growth x as many. Both are embedded once
(all-MiniLM-L6-v2 by default; memory does not depend on which guide made the vectors) and kept under
runs/; then pipeline.mask runs on each in a fresh process and its peak RSS is read.
"""

from __future__ import annotations

import argparse

from benchmarks.common import ROOT, figure, measured, table, wordnet_pairs
from gist_mining import workdir
from pipeline import embed


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--anchors", type=int, default=1000)
    parser.add_argument("--growth", type=int, default=10)
    parser.add_argument("--pool", type=int, default=20_000)
    args = parser.parse_args(argv)
    runs = {}
    for n in (args.anchors, args.anchors * args.growth):
        work = ROOT / "runs" / f"bench-mask-memory-{args.model}-{n}-{args.pool}"
        pairs, corpus = wordnet_pairs(work.with_name(work.name + "-input"), n, args.pool)
        embed.main(["--input", str(pairs), "--corpus", str(corpus), "--work", str(work), "--guide", args.model])
        workdir.remove_steps(work, "search")  # a fresh mask run each time, not a resumed one
        runs[n] = measured(["-m", "pipeline.mask", "--work", work])
    rows = [(n, f"{r['seconds']:.1f}", r["peak_rss_mib"]) for n, r in runs.items()]
    small, large = runs[args.anchors], runs[args.anchors * args.growth]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    print(f"\npipeline.mask over a pool of {args.pool} WordNet glosses ({args.model} vectors), k = 100")
    print(table(rows, ("anchors", "seconds", "peak RSS MiB")))
    print(f"peak RSS ratio at {args.growth}x the anchors: {ratio:.3f}  (target <= 1.10)")
    return [figure(f"mask peak RSS, {args.growth}x anchors / 1x", ratio, "<= 1.10")]


if __name__ == "__main__":
    main()
