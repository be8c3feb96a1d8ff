"""The main job: raw pairs -> guide embeddings -> mined negatives -> GIST and plain fine-tuning -> held-out table.

    python -m pipeline.run                       # the bundled sample, bundled guide and student
    python -m pipeline.run --input my_pairs.parquet --eval my_split/ --work runs/mine --steps 500

Each stage is the same command a user can run alone (pipeline.embed, pipeline.mask, train.run), and each
is resumable: rerunning after an interruption skips what is done. Prints and saves (results.json) the
held-out NDCG@10, MRR@10 and Recall@100 of the base student, of the student fine-tuned without the guide
filter and of the student fine-tuned with it: same steps, data, negatives and seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gist_mining import cli, workdir
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, load_model
from gist_mining.storage import write_json_atomic
from train import run as train

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.split("\n")[0])
    p.add_argument("--input", action="append", default=None, help=f"pairs (default: {SAMPLE}/train.parquet)")
    p.add_argument("--eval", type=Path, default=SAMPLE / "test", help="held-out retrieval split")
    p.add_argument("--work", type=Path, default=Path("runs/sample"))
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


def main(argv=None) -> None:
    from pipeline import embed, mask

    args = parse_args(argv)
    inputs = args.input or [str(SAMPLE / "train.parquet")]
    device = ["--device", args.device] if args.device else []
    seconds = {}
    seconds["embed"] = stage("embed", embed.main, [a for i in inputs for a in ("--input", i)] +
                             ["--work", args.work, "--model", args.guide, *device])
    seconds["mask"] = stage("mask", mask.main, ["--work", args.work])
    common = ["--work", args.work, "--model", args.student, "--max-steps", args.steps, "--batch-size",
              args.batch_size, "--lr", args.lr, "--temperature", args.temperature, "--negatives-per-anchor",
              args.negatives_per_anchor, *device]
    models = {"base": args.student}
    for name, extra in (("plain", ["--guide-filter", "none"]), ("gist", [])):
        out = args.work / workdir.MODELS / name
        seconds[f"train_{name}"] = stage(f"train ({name})", train.main, [*common, "--out", out, *extra])
        models[name] = str(out)
    started = time.perf_counter()
    results = {name: evaluate(path, args.eval, args.device) for name, path in models.items()}
    seconds["eval"] = time.perf_counter() - started
    labels = {"base": f"{args.student} (base)", "plain": "fine-tuned, no guide filter",
              "gist": "fine-tuned, GIST guide filter"}
    print(f"\nheld-out: {args.eval}  ({args.steps} steps x {args.batch_size} anchors each)")
    print(f"| {'model':<32} | NDCG@10 | MRR@10 | Recall@100 |\n|{'-' * 34}|---------|--------|------------|")
    for name, scores in results.items():
        print(f"| {labels[name]:<32} | {scores['ndcg@10']:.4f}  | {scores['mrr@10']:.4f} | {scores['recall@100']:.4f}     |")
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f", total {sum(seconds.values()):.0f}")
    write_json_atomic({"results": results, "seconds": seconds, "settings": {k: str(v) for k, v in vars(args).items()}},
                      args.work / workdir.RESULTS)


if __name__ == "__main__":
    cli.run(main)
