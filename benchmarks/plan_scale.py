"""Planning at scale: the embed stage's reading and planning, up to its first encoded batch, for 1M-10M pairs.

    flock /tmp/bench.lock python -m benchmarks.plan_scale --sizes 1000000 3000000 10000000 --data /tmp/plan-scale

The reference is the in-memory planner this one replaced (commit REFERENCE, checked out under --data), run in
the same session for the sizes up to --reference-max (it needs about 2.3 GB per million pairs).

Each size's pairs are synthetic, as the issue that asked for this measured them: a query of 4-12 words and a
positive of 20-60 words drawn from a 20,000-word vocabulary, every text distinct (2 distinct texts per pair),
one Parquet file of 100,000-row row groups (written once per size, then reused). Each size runs
`pipeline.embed` in a fresh process with a tiny random BERT guide (the guide's size does not change planning),
which stops at its first encode call and reports the wall time since start and the peak RSS (VmHWM) then.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from benchmarks.common import ROOT, script, table
from benchmarks.peak_rss import status_mib

VOCABULARY, ROW_GROUP, SEED = 20_000, 100_000, 0
QUERY_WORDS, POSITIVE_WORDS = (4, 12), (20, 60)
FIRST_ENCODE = "plan_scale first encode:"
REFERENCE = "ab7a861"  # the last commit with pipeline.embed's in-memory planner


def random_texts(rng: np.random.Generator, vocabulary: pa.Array, n: int, words: tuple[int, int]) -> pa.Array:
    """n texts of ``words`` (inclusive range) words drawn uniformly from ``vocabulary``, joined by spaces."""
    lengths = rng.integers(words[0], words[1] + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    picked = vocabulary.take(pa.array(rng.integers(0, len(vocabulary), int(offsets[-1]))))
    return pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), picked), " ")


def write_pairs(path: Path, n_pairs: int) -> Path:
    if path.exists():
        return path
    rng = np.random.default_rng(SEED)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = pa.array(["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(VOCABULARY)])
    tmp = path.with_suffix(".tmp")
    schema = pa.schema([("query", pa.string()), ("positive", pa.string())])
    with pq.ParquetWriter(tmp, schema) as out:
        for start in range(0, n_pairs, ROW_GROUP):
            n = min(ROW_GROUP, n_pairs - start)
            # A row number in every text keeps them all distinct, as real pairs mostly are.
            tags = pc.cast(pa.array(np.arange(start, start + n)), pa.string())
            query = pc.binary_join_element_wise(pa.scalar("q"), tags, random_texts(rng, vocabulary, n, QUERY_WORDS), "")
            positive = pc.binary_join_element_wise(pa.scalar("p"), tags, random_texts(rng, vocabulary, n, POSITIVE_WORDS), "")
            out.write_table(pa.table({"query": query, "positive": positive}, schema=schema))
    tmp.rename(path)
    return path


def child(argv: list[str]) -> None:
    """pipeline.embed's main, stopped at its first encode call with the time and peak RSS so far."""
    started = time.perf_counter()
    from gist_mining.embed import step
    from pipeline import embed

    def first_encode(*_, **__):
        used = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: less swayed than wall time by a busy machine
        print(FIRST_ENCODE, json.dumps({"seconds": round(time.perf_counter() - started, 1), "peak_rss_mib": status_mib(),
                                        "cpu_seconds": round(used.ru_utime + used.ru_stime, 1)}), flush=True)
        os._exit(0)

    step.encode = first_encode
    embed.main(argv)


def measure(pairs: Path, work: Path, model: Path, code: Path) -> dict:
    argv = ["--input", str(pairs), "--work", str(work), "--guide", str(model), "--backend", "torch", "--no-cache",
            "--overwrite"]
    # The child imports the code it measures (this checkout or the reference) first, this checkout's benchmarks after.
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(code), str(ROOT)]))
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True, env=env,
                          check=False)
    line = next((x for x in proc.stdout.splitlines() if x.startswith(FIRST_ENCODE)), None)
    if line is None:
        raise SystemExit(f"pipeline.embed on {pairs} did not reach its first encode:\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix(FIRST_ENCODE))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--data", type=Path, default=Path("/tmp/plan-scale"), help="pairs files and work directories")
    parser.add_argument("--keep-work", action="store_true", help="keep each size's work directory")
    parser.add_argument("--reference-max", type=int, default=3_000_000, help="largest size the reference runs at")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    model = args.data / "tiny" / "st"
    if not model.exists():
        script(ROOT / "tests" / "conftest.py").build_tiny_model(args.data / "tiny")
    reference = args.data / f"reference-{REFERENCE}"
    if not reference.exists():
        reference.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", REFERENCE], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(reference)], input=archive, check=True)
    rows = []
    for n in args.sizes:
        pairs = write_pairs(args.data / f"pairs-{n}.parquet", n)
        for planner, code in (("streamed", ROOT), (f"in memory ({REFERENCE})", reference)):
            if code == reference and n > args.reference_max:
                continue
            work = args.data / f"work-{n}"
            got = measure(pairs, work, model, code)
            texts = pq.ParquetFile(work / "texts.parquet").metadata.num_rows
            if not args.keep_work:
                subprocess.run(["rm", "-rf", str(work)], check=True)
            rows.append((f"{n:,}", planner, f"{texts:,}", f"{pairs.stat().st_size / 2**20:.0f}", got["seconds"],
                         got["cpu_seconds"], f"{got['cpu_seconds'] / n * 1e6:.1f}", f"{got['peak_rss_mib'] / 1024:.2f}"))
            print(table(rows, ("pairs", "planner", "distinct texts", "input MiB", "wall seconds to first encode",
                               "CPU seconds", "CPU us per pair", "peak RSS GiB")), flush=True)


if __name__ == "__main__":
    main()
