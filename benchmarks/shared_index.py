"""Two mask shard processes on one machine share one memory-mapped index: their memory, sampled while they run.

    flock /tmp/gist-bench.lock python -m benchmarks.shared_index --pool 300000 --anchors 4000 --index flat

A synthetic work directory (benchmarks/synthetic_pool.py) is masked twice: by one process, and by two shard
processes started together (`--num-shards 2 --shard-index i`; one builds the index, the other waits for its
marker, both load it with `gist_mining.mining.load_index`, a memory map). Every 0.2 s each process's resident
memory is read from /proc: RSS split into anonymous memory (its own) and file pages (the mapped index,
shared through the page cache), and PSS, which charges a page shared by two processes half to each. If each
process held its own copy of the index, the two processes' PSS would add up to two indexes; mapped, to one.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import synthetic_pool
from benchmarks.common import ROOT, figure, table
from gist_mining import workdir

FIELDS = ("Rss", "Pss", "Anonymous", "index Rss", "index Pss")


def sample(pid: int, index_file: Path) -> dict[str, int] | None:
    """MiB resident now, in all and in the mappings of ``index_file`` (/proc/PID/smaps); None once it is gone."""
    try:
        smaps = Path(f"/proc/{pid}/smaps").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    total, index, inside = dict.fromkeys(FIELDS[:3], 0), dict.fromkeys(FIELDS[:2], 0), False
    for line in smaps.splitlines():
        head = line.split(maxsplit=6)
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: its range, ..., its path
            inside = len(head) == 6 and head[5] == str(index_file)
        elif head[0].rstrip(":") in total:
            total[head[0].rstrip(":")] += int(head[1])
            if inside and head[0].rstrip(":") in index:
                index[head[0].rstrip(":")] += int(head[1])
    return {**{k: v // 1024 for k, v in total.items()}, **{f"index {k}": v // 1024 for k, v in index.items()}}


def run_mask(work: Path, common: list[str], shards: list[list[str]]) -> tuple[list[dict[str, int]], int]:
    """Start one mask process per entry of ``shards`` together; each one's peak of every field (MiB), and the
    largest sum of their index maps' PSS taken at one instant while all of them map it."""
    index_file = (work / workdir.INDEX_FILE).resolve()
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.mask", "--work", str(work), *common, *extra],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True) for extra in shards]
    peaks, together = [dict.fromkeys(FIELDS, 0) for _ in procs], 0
    while any(p.poll() is None for p in procs):
        now = [sample(proc.pid, index_file) if proc.poll() is None else None for proc in procs]
        for peak, sampled in zip(peaks, now):
            for key in FIELDS:
                peak[key] = max(peak[key], (sampled or {}).get(key, 0))
        if all(sampled and sampled["index Rss"] for sampled in now):
            together = max(together, sum(sampled["index Pss"] for sampled in now))
        time.sleep(0.2)
    for proc in procs:
        if proc.returncode != 0:
            raise SystemExit(f"pipeline.mask failed:\n{proc.stderr.read()[-3000:]}")
    return peaks, together


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=300_000)
    parser.add_argument("--anchors", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--index", default="flat", help="flat: the largest index per vector, so sharing shows most")
    parser.add_argument("--root", type=Path, default=Path("/tmp"))
    args = parser.parse_args(argv)
    one, two = args.root / "shared-index-one", args.root / "shared-index-two"
    synthetic_pool.main(["--work", str(one), "--pool", str(args.pool), "--anchors", str(args.anchors),
                         "--dim", str(args.dim)])
    shutil.copytree(one, two)
    common = ["--index", args.index, "--anchors-per-shard", str(max(1, args.anchors // 10))]
    alone, _ = run_mask(one, common, [[]])
    pair, together = run_mask(two, common, [["--num-shards", "2", "--shard-index", str(i)] for i in (0, 1)])
    index_mib = (two / workdir.INDEX_FILE).stat().st_size / 2**20
    shutil.rmtree(one)
    shutil.rmtree(two)
    rows = [("one process", *(alone[0][k] for k in FIELDS)),
            *((f"shard process {i} of 2", *(p[k] for k in FIELDS)) for i, p in enumerate(pair))]
    print(f"\npipeline.mask --index {args.index}, synthetic {args.pool} x {args.dim} pool, {args.anchors} anchors; "
          f"index file {index_mib:.0f} MiB; peaks in MiB, sampled every 0.2 s")
    print(table(rows, ("process", "peak RSS", "peak PSS", "peak anonymous", "peak RSS of the index map",
                       "peak PSS of the index map")))
    shared = together / index_mib
    print(f"while both shard processes map the index, their index PSS summed / the index file: {shared:.2f} "
          "(1.00: one copy between them; 2.00 if each held its own)")
    return [figure("two shard processes' index PSS / index size", shared, "~1: one shared copy")]


if __name__ == "__main__":
    main()
