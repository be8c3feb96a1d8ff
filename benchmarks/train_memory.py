"""The trainer's memory against the number of anchors: peak RSS of train.run for a few steps, and its step time.

    python -m benchmarks.train_memory --root /work/bench/flat --sizes 100000 1000000 10000000     # memory
    flock /tmp/bench.lock python -m benchmarks.train_memory --root /work/bench/flat --timing 100000  # step time
    flock /tmp/bench.lock python -m benchmarks.train_memory --root /work/bench/flat --timing 100000 --against ../before
    python -m benchmarks.train_memory --root /work/bench/flat --sizes 100000 1000000 10000000 --trainer st

For each number of anchors a work directory is made under --root (kept, and reused when it is complete): the
embed stage's files by benchmarks/synthetic_pool.py (real shards, manifest and tables: anchor N asks "query N",
whose positive is "doc N", a pool of 1.1 x anchors documents, --dim-d float16 vectors), then candidates and mined
manifests and mined shards written directly, as pipeline.mask writes them (the schema, records and fingerprint
chain the readers check; a 10M-anchor search would take hours here): one mined negative per anchor, the positive
of anchor (N + anchors/2) mod anchors, so every text is used twice. The vector matrix, the text table and the row
table are built once, in a process of their own (measured apart: the one time the pool and the rows are sorted).
Then `train.run` trains a tiny random BERT (tests/conftest.py's) for --steps steps in a fresh process, and
`TrainingData` with its first epoch's plan is loaded in another: the data's own part of the peak. Each has two
figures (benchmarks/peak_rss.py): peak RSS (VmHWM: also the pages of any file it maps, shared libraries among them)
and the peak of its own, anonymous memory.

--trainer st: sentence-transformers' trainer instead, with StoredGuideGISTLoss on mined_dataset(work) (built first,
measured apart) and task_batch_sampler(work, "shuffled"): its peak RSS (with the pages of the data set's files,
which ``datasets`` maps) and its own memory.

--timing: the step time at that size, by default (--guide-cache 0: each batch's vectors read from the vector
store) against --guide-cache all (every vector the rows use moved to the device once: the old path), or with
--against DIR against the train.run of the checkout in DIR (each with its own defaults), alternating for --repeats
runs each: the fastest run's mean seconds per step (its first step left out) of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import ROOT, figure, measured, script, table
from gist_mining import workdir
from gist_mining.mining import MINED_SCHEMA, MiningRules
from gist_mining.storage import config_fingerprint, write_json_atomic, write_parquet_atomic

ROWS_PER_SHARD = 1_000_000


def prepare(root: Path, anchors: int, dim: int) -> tuple[Path, dict]:
    """The work directory of ``anchors`` (made unless complete), and what making its text table cost."""
    work = root / f"anchors-{anchors}-d{dim}"
    if workdir.read_record(work / workdir.MINED_MANIFEST) is None:
        measured(["-m", "benchmarks.synthetic_pool", "--work", work, "--pool", anchors + max(1, anchors // 10),
                  "--anchors", anchors, "--dim", dim])
        write_mined(work)
    built = measured(["-m", "benchmarks.train_memory", "--build", work])
    return work, built


def write_mined(work: Path) -> None:
    """candidates and mined manifests, and mined shards, as pipeline.mask writes them (no candidates shards: the
    trainer does not read them)."""
    embed = workdir.checked_embed_manifest(work)
    pairs = workdir.read_table(work, workdir.ANCHORS, ["query_id", "positive_id", "task"])
    n = pairs.height
    rules = MiningRules(num_negatives=1)
    candidates = workdir.CandidatesManifest(
        fingerprint=config_fingerprint({"synthetic candidates": embed.fingerprint}), parent_fingerprint=embed.fingerprint,
        n_anchors=n, k=1, index="flat", memory_budget=None, include_queries=False, shard_size=ROWS_PER_SHARD,
        pool_slice_size=None, pool_slices=None, rescore=None, shards=[]).to_json()
    shards = []
    for i, start in enumerate(range(0, n, ROWS_PER_SHARD)):
        part = pairs.slice(start, ROWS_PER_SHARD)
        anchor = np.arange(start, start + part.height)
        negative = pairs["positive_id"].to_numpy()[(anchor + n // 2) % n]
        one = lambda values, kind: pa.ListArray.from_arrays(np.arange(part.height + 1, dtype=np.int32),  # noqa: E731
                                                             pa.array(values, kind.value_type))
        empty = lambda kind: pa.ListArray.from_arrays(np.zeros(part.height + 1, np.int32), pa.array([], kind))  # noqa: E731
        frame = pa.table({
            "anchor_id": anchor, "query_id": part["query_id"].to_numpy(), "positive_id": part["positive_id"].to_numpy(),
            "task": part["task"].to_arrow(), "positive_score": np.ones(part.height, np.float32),
            "threshold": np.full(part.height, 0.95, np.float32), "negative_ids": one(negative, pa.list_(pa.int64())),
            "negative_scores": one(np.full(part.height, 0.5, np.float32), pa.list_(pa.float32())),
            "negative_ranks": one(np.zeros(part.height, np.int32), pa.list_(pa.int32())),
            "false_negative_ids": empty(pa.int64()), "false_negative_scores": empty(pa.float32()),
            "given_negative_flagged": empty(pa.bool_()), "given_negative_ids": empty(pa.int64()),
            "n_candidates": np.ones(part.height, np.int32), "candidates_above_positive": np.zeros(part.height, np.int32),
        }).cast(MINED_SCHEMA)
        path = work / workdir.MINED / workdir.shard_name(i)
        write_parquet_atomic(frame, path)
        shards.append({"file": f"{workdir.MINED}/{path.name}", **workdir.describe_file(path)})
    mined = {"fingerprint": config_fingerprint({"synthetic mined": candidates["fingerprint"]}),
             "parent_fingerprint": candidates["fingerprint"], "embed_fingerprint": embed.fingerprint,
             "rules": rules.as_dict(), "score": "guide",
             "rescore_model": None, "shards": shards}
    write_json_atomic(candidates, work / workdir.CANDIDATES_MANIFEST)
    write_json_atomic(mined, work / workdir.MINED_MANIFEST)


def student(root: Path) -> Path:
    path = root / "tiny-student" / "st"
    if not path.exists():
        script(ROOT / "tests" / "conftest.py").build_tiny_model(path.parent)
    return path


def train(work: Path, model: Path, steps: int, batch_size: int, guide_cache: str | None, root: Path = ROOT) -> dict:
    """train.run in a fresh process (``guide_cache`` None: its default): its peak RSS and mean seconds per step after
    its first (metrics.jsonl's clock is in hundredths of a second, too coarse for one step of a tiny student)."""
    cache = [] if guide_cache is None else ["--guide-cache", guide_cache]
    with tempfile.TemporaryDirectory(prefix="train-memory-") as out:
        run = measured(["-m", "train.run", "--work", work, "--out", out, "--student", model, "--max-steps", steps,
                        "--batch-size", batch_size, *cache, "--save-steps", 0, "--save-minutes", 0], root)
        seconds = [json.loads(line)["seconds"] for line in (Path(out) / workdir.METRICS).read_text().splitlines()
                   if '"loss"' in line]
    run["step_s"] = (seconds[-1] - seconds[0]) / (len(seconds) - 1)
    return run


def load(work: Path) -> None:
    """In the measured process: TrainingData as train.run loads it, and its first epoch's plan."""
    from gist_mining.training.batches import EpochPlan
    from gist_mining.training.data import TrainingData

    data = TrainingData(work, 1, "cpu")
    print(json.dumps({"rows": len(data), "batches": len(EpochPlan(data.plan_rows, 32, 0, 0))}))


def build(work: Path) -> None:
    """In the measured process: the vector matrix, the text table and the row table, once."""
    texts, rows = workdir.TextTable(work), workdir.RowTable(work, 1)
    print(json.dumps({"texts": len(texts), "row_table_mib": rows.path.stat().st_size / 2**20}))


def stock_data(work: Path) -> None:
    """In the measured process: the stock trainer's data set, once (mined_dataset's build)."""
    from gist_mining.st import mined_dataset

    print(json.dumps({"rows": len(mined_dataset(work, 1, short="drop"))}))


def stock(work: Path, model: Path, steps: int, batch_size: int) -> None:
    """In the measured process: sentence-transformers' trainer with StoredGuideGISTLoss on mined_dataset(work) and
    our one-task-a-batch sampler (shuffled, as train.run plans; the stock samplers draw a permutation of every row)."""
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from gist_mining.st import StoredGuideGISTLoss, mined_dataset, task_batch_sampler

    dataset = mined_dataset(work, 1, short="drop")
    student = SentenceTransformer(str(model), device="cpu")
    with tempfile.TemporaryDirectory(prefix="train-memory-st-") as out:
        args = SentenceTransformerTrainingArguments(out, max_steps=steps, per_device_train_batch_size=batch_size,
                                                    save_strategy="no", report_to="none", disable_tqdm=True,
                                                    batch_sampler=task_batch_sampler(work, "shuffled"))
        SentenceTransformerTrainer(model=student, args=args, train_dataset=dataset,
                                   loss=StoredGuideGISTLoss(student, work)).train()


def flatness(trainer: str, sizes: list[int], results: list[tuple[float, float]]) -> list[dict]:
    """The peak RSS and peak anonymous memory (``results``, one pair a size) at the last size over the first."""
    return [figure(f"{trainer} {what} at {sizes[-1]} anchors over {sizes[0]}", results[-1][i] / results[0][i],
                   target="<= 1.10", unit="x") for i, what in enumerate(("peak RSS", "peak anonymous RSS"))]


def stock_memory(args) -> list[dict]:
    """The stock trainer's peak RSS and own memory against the anchors (--trainer st)."""
    model = student(args.root)
    header = ("anchors", "data set build: peak MiB, s", "trainer peak RSS MiB", "trainer own (anonymous) MiB",
              "RSS, own: ratio to first")
    rows, results = [], []
    for anchors in args.sizes:
        work, _ = prepare(args.root, anchors, args.dim)
        built = measured(["-m", "benchmarks.train_memory", "--stock-data", work])
        run = measured(["-m", "benchmarks.train_memory", "--stock", work, "--root", args.root, "--steps", args.steps,
                        "--batch-size", args.batch_size])
        results.append((run["peak_rss_mib"], run["peak_anonymous_mib"]))
        rows.append((anchors, f"{built['peak_rss_mib']:.0f}, {built['seconds']:.0f}", f"{run['peak_rss_mib']:.0f}",
                     f"{run['peak_anonymous_mib']:.0f}",
                     f"{results[-1][0] / results[0][0]:.2f}x, {results[-1][1] / results[0][1]:.2f}x"))
        print(table(rows[-1:], header), flush=True)
    print(f"\nSentenceTransformerTrainer, StoredGuideGISTLoss, task_batch_sampler(work, 'shuffled'), {args.steps} steps "
          f"of {args.batch_size}, a tiny random BERT student, {args.dim}-d float16 guide vectors, one negative per anchor")
    print(table(rows, header))
    return flatness("stock trainer", args.sizes, results)


def memory(args) -> list[dict]:
    model = student(args.root)
    baseline = measured(["-m", "benchmarks.train_memory", "--imports-only"])["peak_rss_mib"]
    header = ("anchors", "texts", "row table MiB", "TrainingData + plan: RSS, own MiB", "train.run peak RSS MiB",
              "train.run own (anonymous) MiB", "own: ratio to first", "s / step", "tables build: peak MiB, s")
    rows, results = [], []
    for anchors in args.sizes:
        work, built = prepare(args.root, anchors, args.dim)
        loaded = measured(["-m", "benchmarks.train_memory", "--load", work])
        run = train(work, model, args.steps, args.batch_size, args.guide_cache)
        results.append((run["peak_rss_mib"], run["peak_anonymous_mib"]))
        made = json.loads(built["stdout"].strip().splitlines()[-2])  # the last line is peak_rss.py's
        rows.append((anchors, made["texts"], f"{made['row_table_mib']:.0f}",
                     f"{loaded['peak_rss_mib']:.0f}, {loaded['peak_anonymous_mib']:.0f}", f"{run['peak_rss_mib']:.0f}",
                     f"{run['peak_anonymous_mib']:.0f}", f"{run['peak_anonymous_mib'] / results[0][1]:.2f}x",
                     f"{run['step_s']:.4f}", f"{built['peak_rss_mib']:.0f}, {built['seconds']:.0f}"))
        print(table(rows[-1:], header), flush=True)
    print(f"\ntrain.run --max-steps {args.steps} --batch-size {args.batch_size} --guide-cache {args.guide_cache}, a tiny "
          f"random BERT student, {args.dim}-d float16 guide vectors, one negative per anchor; a process that imports "
          f"train.run and loads nothing peaks at {baseline:.0f} MiB")
    print(table(rows, header))
    return flatness("train.run", args.sizes, results)


def timing(args) -> list[dict]:
    """Step time at one size: this checkout's default (--guide-cache 0) against --guide-cache all, or with
    --against, against that checkout's train.run (the code before a change), alternating."""
    model = student(args.root)
    work, _ = prepare(args.root, args.timing, args.dim)
    arms = ({"this checkout": (None, ROOT), str(args.against): (None, args.against)} if args.against else
            {"--guide-cache 0": ("0", ROOT), "--guide-cache all": ("all", ROOT)})
    times = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for arm, (cache, root) in arms.items():
            times[arm].append(train(work, model, args.steps, args.batch_size, cache, root)["step_s"])
            print(f"{arm}: {times[arm][-1]:.4f} s/step", flush=True)
    # The fastest run of each: on a shared machine a run is only ever slowed by others, never sped up.
    (ours, best), (theirs, reference) = ((arm, min(t)) for arm, t in times.items())
    ratio = best / reference
    print(f"\n{args.timing} anchors, train.run --max-steps {args.steps} --batch-size {args.batch_size}, the fastest of "
          f"{args.repeats} runs each: {ours} {best:.4f} s/step, {theirs} {reference:.4f} s/step: {ratio:.3f}x (medians "
          f"{statistics.median(times[ours]):.4f} and {statistics.median(times[theirs]):.4f})")
    return [figure(f"train.run step time, {ours} over {theirs}, {args.timing} anchors", ratio, target="<= 1.05",
                   unit="x")]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/train-memory"), help="where the work directories go")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000], help="anchors")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--guide-cache", default="0")
    parser.add_argument("--timing", type=int, default=None, help="anchors: time steps instead of measuring memory")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", type=Path, default=None,
                        help="with --timing: a checkout of other code (e.g. before a change) to time against")
    parser.add_argument("--load", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stock", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--stock-data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trainer", choices=["train.run", "st"], default="train.run",
                        help="st: sentence-transformers' trainer with StoredGuideGISTLoss (memory only)")
    parser.add_argument("--imports-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.imports_only:
        import train.run  # noqa: F401
        return []
    if args.load:
        return load(args.load)
    if args.build:
        return build(args.build)
    if args.stock_data:
        return stock_data(args.stock_data)
    if args.stock:
        return stock(args.stock, student(args.root), args.steps, args.batch_size)
    args.root.mkdir(parents=True, exist_ok=True)
    if args.timing:
        return timing(args)
    return stock_memory(args) if args.trainer == "st" else memory(args)


if __name__ == "__main__":
    main()
