"""The trainer's batch planner at a million rows: train.run's RowTexts planner against the reference it replaced.

    flock /tmp/gist-bench.lock python -m benchmarks.batch_planner --rows 1000000 --negatives 7

Rows of a query, a positive and --negatives negatives drawn from a pool of 11 texts per row (seeded; the first
negative repeats the query in a tenth of the rows, as a duplicate text within a row does). The reference holds
each row's texts as a Python set and the planner's last batch per text in a dict (train.run at
commit 419a786); ours holds them as RowTexts (each text's position among the rows' distinct ids, int32, end to end) and
Python arrays. Each side runs in a fresh process: the rows and their sorted ids are made, the peak RSS is reset
there (Linux's clear_refs, after the heap's free pages go back), then the side builds its rows once and
plans one epoch; its memory is the peak above that start. Both plans must be equal.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np

from benchmarks.common import figure, measured, table
from benchmarks.peak_rss import status_mib
from gist_mining.training.batches import EpochPlan, NextWithRoom, PlanRows


def make_rows(n: int, negatives: int) -> np.ndarray:
    """The rows' text ids."""
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 11 * n, (n, 2 + negatives))
    rows[::10, 2] = rows[::10, 0]
    return rows


def reference_plan(texts: list[set[int]], batch_size: int, seed: int) -> list[list[int]]:
    """train.run's planner before RowTexts (one group, every batch kept): a set per row, a dict per text."""
    rows = list(range(len(texts)))
    random.Random(seed * 100_003).shuffle(rows)
    n_batches = -(-len(rows) // batch_size)
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    after: dict[int, int] = {}
    room = NextWithRoom(n_batches)
    for row in rows:
        target = room.find(max([after.get(t, 0) for t in texts[row]], default=0))
        if target == n_batches:
            continue
        batches[target].append(row)
        if len(batches[target]) == batch_size:
            room.close(target)
        for t in texts[row]:
            after[t] = target + 1
    return [b for b in batches if b]


def side(which: str, n: int, negatives: int, batch_size: int) -> None:
    """In the measured process: build the rows as ``which`` holds them and plan one epoch; print the times, the
    peak RSS above the start and a hash of the plan."""
    rows = make_rows(n, negatives)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS
    start = status_mib("VmRSS")
    started = time.perf_counter()
    if which == "reference":  # a chunk of rows at a time, as train.run built them row by row
        texts = [set(r) for chunk in np.array_split(rows, 100) for r in chunk.tolist()]
    elif which == "ours":
        import polars as pl

        texts = PlanRows.of(pl.Series(rows).cast(pl.List(pl.Int64)), ["t"] * n)
    built = time.perf_counter()
    if which == "reference":
        plan = reference_plan(texts, batch_size, seed=0)
    elif which == "ours":
        plan = list(EpochPlan(texts, batch_size, seed=0, epoch=0, window=n))  # one window: the reference's plan
    planned = time.perf_counter()
    print(json.dumps({"build": built - started, "plan": planned - built, "memory": status_mib() - start,
                      "hash": hashlib.sha256(json.dumps(plan).encode()).hexdigest()}))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--negatives", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--side", choices=["reference", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        side(args.side, args.rows, args.negatives, args.batch_size)
        return []
    sizes = ["--rows", args.rows, "--negatives", args.negatives, "--batch-size", args.batch_size]
    result = {name: json.loads(measured(["-m", "benchmarks.batch_planner", "--side", name, *sizes])["stdout"]
                               .strip().splitlines()[-2]) for name in ("reference", "ours")}
    if result["reference"]["hash"] != result["ours"]["hash"]:
        raise SystemExit("the two planners' plans differ")
    rows = [(name, f"{r['build']:.1f}", f"{r['plan']:.1f}", f"{r['memory']:.0f}") for name, r in result.items()]
    print(f"\n{args.rows} rows of {2 + args.negatives} texts, batches of {args.batch_size}: plans equal")
    print(table(rows, ("planner", "build rows (s)", "plan an epoch (s)", "peak RSS above the rows (MiB)")))
    ours, ref = result["ours"], result["reference"]
    memory = ours["memory"] / ref["memory"]
    print(f"ours / reference: plan time {ours['plan'] / ref['plan']:.2f}x, memory {memory:.2f}x")
    return [figure("batch planner plan time / set-based reference", ours["plan"] / ref["plan"]),
            figure("batch planner memory / set-based reference", memory)]


if __name__ == "__main__":
    main()
