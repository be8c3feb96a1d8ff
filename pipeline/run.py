"""The main job: raw pairs -> guide embeddings -> mined negatives -> GIST and plain fine-tuning -> held-out table.

    python -m pipeline.run                       # the bundled data sets, bundled guide and student
    python -m pipeline.run --input my_pairs.parquet --eval my_split/ --work runs/mine --steps 500

Each stage is the same command a user can run alone (pipeline.embed, pipeline.mask, train.run), and each
is resumable: rerunning after an interruption skips what is done. Prints and saves (results.json) the
held-out NDCG@10, MRR@10 and Recall@100 of the base student, of the student fine-tuned without the guide
filter and of the student fine-tuned with it: same steps, data, negatives and seed.

By default it runs twice: on the retrieval sample (data/sample: definitions and docstrings, where in-batch
false negatives are rare) and on the classification-style sections task (data/sections: every other
same-section text in a batch is a false negative), so the table shows where the guide's filter matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gist_mining import cli, workdir
from gist_mining.errors import UsageError
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, load_model
from gist_mining.storage import write_json_atomic
from train import run as train

DATA = Path(__file__).resolve().parents[1] / "data"
BUNDLED = ("sample", "sections")  # data/NAME/train.parquet and data/NAME/test/, work directory runs/NAME


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.split("\n")[0])
    p.add_argument("--input", action="append", default=None,
                   help=f"pairs (default: each of {', '.join(BUNDLED)} in {DATA}, in turn)")
    p.add_argument("--eval", type=Path, default=None, help="held-out retrieval split (with --input)")
    p.add_argument("--work", type=Path, default=None, help="work directory (with --input; default runs/NAME)")
    p.add_argument("--guide", default=DEFAULT_GUIDE)
    p.add_argument("--student", default=DEFAULT_STUDENT)
    p.add_argument("--steps", type=int, default=60, help="training steps for each fine-tuned student")
    d = train.Defaults()
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--negatives-per-anchor", type=int, default=d.negatives_per_anchor)
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def stage(name: str, main, argv: list) -> float:
    print(f"\n== {name}: {' '.join(map(str, argv))}", file=sys.stderr)
    started = time.perf_counter()
    main([str(a) for a in argv])
    return time.perf_counter() - started


def evaluate(model_path: str, split: Path, device) -> dict:
    from train.run import headline, make_evaluator

    return headline(make_evaluator(split, "test")(load_model(model_path, device=device)))


def run_job(args, inputs: list[str], split: Path, work: Path) -> dict:
    """One data set through every stage; the held-out scores of the base, plain and GIST students."""
    from pipeline import embed, mask

    device = ["--device", args.device] if args.device else []
    seconds = {}
    seconds["embed"] = stage("embed", embed.main, [a for i in inputs for a in ("--input", i)] +
                             ["--work", work, "--model", args.guide, *device])
    seconds["mask"] = stage("mask", mask.main, ["--work", work])
    common = ["--work", work, "--model", args.student, "--max-steps", args.steps, "--batch-size",
              args.batch_size, "--lr", args.lr, "--temperature", args.temperature, "--negatives-per-anchor",
              args.negatives_per_anchor, *device]
    models = {"base": args.student}
    for name, extra in (("plain", ["--guide-filter", "none"]), ("gist", [])):
        out = work / workdir.MODELS / name
        seconds[f"train_{name}"] = stage(f"train ({name})", train.main, [*common, "--out", out, *extra])
        models[name] = str(out)
    started = time.perf_counter()
    results = {name: evaluate(path, split, args.device) for name, path in models.items()}
    seconds["eval"] = time.perf_counter() - started
    write_json_atomic({"results": results, "seconds": seconds, "eval": str(split),
                       "settings": {k: str(v) for k, v in vars(args).items()}}, work / workdir.RESULTS)
    return {"results": results, "seconds": seconds}


def print_table(args, name: str, split: Path, job: dict) -> None:
    labels = {"base": f"{args.student} (base)", "plain": "fine-tuned, no guide filter",
              "gist": "fine-tuned, GIST guide filter"}
    print(f"\n{name} held-out: {split}  ({args.steps} steps x {args.batch_size} anchors each)")
    print(f"| {'model':<32} | NDCG@10 | MRR@10 | Recall@100 |\n|{'-' * 34}|---------|--------|------------|")
    for model, scores in job["results"].items():
        print(f"| {labels[model]:<32} | {scores['ndcg@10']:.4f}  | {scores['mrr@10']:.4f} | {scores['recall@100']:.4f}     |")
    seconds = job["seconds"]
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f", total {sum(seconds.values()):.0f}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.input:
        if args.eval is None:
            raise UsageError("--input needs --eval: a held-out retrieval split (queries, corpus, qrels)")
        jobs = [("input", args.input, args.eval, args.work or Path("runs/mine"))]
    else:
        jobs = [(name, [str(DATA / name / "train.parquet")], DATA / name / "test", Path("runs") / name)
                for name in BUNDLED]
    done = [(name, split, run_job(args, inputs, split, work)) for name, inputs, split, work in jobs]
    for name, split, job in done:
        print_table(args, name, split, job)


if __name__ == "__main__":
    cli.run(main)
