"""The trainer's data at scale: peak RSS of loading the mined rows, their texts and guide vectors (TrainingData).

    flock /tmp/gist-bench.lock python benchmarks/train_memory.py --sizes 300000 1000000 --anchors 100000
    python benchmarks/train_memory.py --readers /tmp/scale-1m /tmp/scale-10m

For each pool size a work directory is written by benchmarks/synthetic_pool.py under --root and mined by
pipeline.mask (--index ivfpq, as benchmarks/mask_scale.py runs it); then gist_mining.training.data.TrainingData loads it in
a fresh process (peak RSS is its VmHWM, benchmarks/peak_rss.py) with --negatives per anchor, and the work
directory is deleted (unless --keep). With --readers DIR..., only the part of loading that grows with the
pool runs, on embedded work directories that need not be mined (the texts and guide vectors of each
anchor's query, positive and one random stored text). A process that only imports train.run is measured too: the data's
own memory is the difference. The growth between sizes, per million pool texts, is what a larger pool adds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import figure, measured, table  # noqa: E402
from gist_mining.training import TrainConfig  # noqa: E402
from gist_mining.training.data import TrainingData  # noqa: E402


def load(work: Path | None, negatives: int) -> None:
    """In the measured process: load the data as train.run does, and say what it holds; without a work
    directory, import train.run only (the baseline)."""
    if work is None:
        print(json.dumps({}))
        return
    data = TrainingData(work, negatives, "cpu")
    guide = sum(t.numel() * t.element_size() for t in data.guide.values())
    print(json.dumps({"rows": len(data.tasks), "texts": len(data.text_ids), "guide_mib": guide / 2**20,
                      "texts_mib": data.texts.estimated_size() / 2**20}))


def readers(work: Path) -> None:
    """In the measured process: the part of TrainingData's loading that grows with the pool, on a work directory
    that is embedded but need not be mined (a 10M pool's mask stage takes longer than this machine can give):
    the texts and float16 guide vectors of the anchors' queries and positives and of one more stored text per
    anchor, drawn at random, standing in for its mined negative."""
    import numpy as np

    from gist_mining import workdir
    from gist_mining.training.data import on_device

    anchors = workdir.read_table(work, workdir.ANCHORS, ["query_id", "positive_id"])
    documents = workdir.VectorStore(work, "document")
    drawn = np.random.default_rng(0).choice(documents.sorted_ids, len(anchors), replace=False)
    ids = {"query": np.unique(anchors["query_id"].to_numpy()),
           "document": np.unique(np.concatenate([anchors["positive_id"].to_numpy(), drawn]))}
    texts = workdir.read_texts(work, np.union1d(*ids.values()))
    guide = [on_device(documents, ids["document"], "cpu"), on_device(workdir.VectorStore(work, "query"), ids["query"], "cpu")]
    print(json.dumps({"rows": len(anchors), "texts": len(texts), "pool": len(documents.sorted_ids),
                      "guide_mib": sum(t.numel() * t.element_size() for t in guide) / 2**20,
                      "texts_mib": texts["text"].estimated_size() / 2**20}))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[300_000, 1_000_000])
    parser.add_argument("--anchors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--negatives", type=int, default=TrainConfig.negatives_per_anchor, help="mined negatives per anchor")
    parser.add_argument("--root", type=Path, default=Path("/tmp"))
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    parser.add_argument("--load", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--readers", type=Path, nargs="+", default=None,
                        help="embedded work directories: measure only the readers that grow with the pool (no mask run)")
    parser.add_argument("--read", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load or args.imports_only:
        return load(args.load, args.negatives)
    if args.read:
        return readers(args.read)
    if args.readers:
        return measure_readers(args.readers)
    rows, results = [], []
    baseline = measured(["benchmarks/train_memory.py", "--imports-only"])["peak_rss_mib"]
    header = ("pool", "anchors", "texts loaded", "guide MiB (float16)", "texts MiB", "peak RSS MiB", "load s")
    for size in args.sizes:
        work = args.root / f"train-memory-{size}"
        measured(["benchmarks/synthetic_pool.py", "--work", work, "--pool", size, "--anchors", args.anchors,
                  "--dim", args.dim])
        measured(["-m", "pipeline.mask", "--work", work, "--index", "ivfpq"])
        run = measured(["benchmarks/train_memory.py", "--load", work, "--negatives", args.negatives])
        if not args.keep:
            shutil.rmtree(work)
        said = json.loads(run["stdout"].strip().splitlines()[-2])  # the last line is peak_rss.py's
        results.append(dict(size=size, rss=run["peak_rss_mib"]))
        rows.append((size, said["rows"], said["texts"], f"{said['guide_mib']:.0f}", f"{said['texts_mib']:.0f}",
                     f"{run['peak_rss_mib']:.0f}", f"{run['seconds']:.1f}"))
        print(table(rows[-1:], header), flush=True)
    print(f"\ngist_mining.training.data.TrainingData, synthetic {args.dim}-d float16 vectors, {args.negatives} negative(s) per anchor; "
          f"a process that imports train.run and loads nothing peaks at {baseline:.0f} MiB")
    print(table(rows, header))
    first, last = results[0], results[-1]
    if last["size"] > first["size"]:
        per_million = (last["rss"] - first["rss"]) / ((last["size"] - first["size"]) / 1e6)
        print(f"growth: {per_million:.1f} MiB of peak RSS per million pool texts")
    return [figure(f"trainer data peak RSS at {last['size']} texts, {args.anchors} anchors", last["rss"], unit="MiB")]


def measure_readers(works: list[Path]) -> list[dict]:
    header = ("pool", "anchors", "texts loaded", "guide MiB (float16)", "texts MiB", "peak RSS MiB", "load s")
    rows = []
    for work in works:
        run = measured(["benchmarks/train_memory.py", "--read", work])
        said = json.loads(run["stdout"].strip().splitlines()[-2])
        rows.append((said["pool"], said["rows"], said["texts"], f"{said['guide_mib']:.0f}", f"{said['texts_mib']:.0f}",
                     f"{run['peak_rss_mib']:.0f}", f"{run['seconds']:.1f}"))
        print(table(rows[-1:], header), flush=True)
    print("\nthe readers of gist_mining.training.data.TrainingData that grow with the pool: texts and guide vectors of the anchors' "
          "queries, positives and one random stored text each")
    print(table(rows, header))
    return [figure(f"trainer readers peak RSS at {rows[-1][0]} texts", float(rows[-1][5]), unit="MiB")]


if __name__ == "__main__":
    main()
