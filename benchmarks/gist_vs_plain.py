"""GIST-filtered against unfiltered fine-tuning on the validation split, for a few training settings.

    python -m benchmarks.gist_vs_plain --work runs/sample --eval data/sample/val --max-steps 60

Needs a mined work directory (pipeline.run or pipeline.embed + pipeline.mask; a copy re-filtered with
--margin-strategy none gives negatives mined without the positive-aware filter). For each setting, two
students train with the same steps, data, negatives and seed, one with --guide-filter none; the table
gives NDCG@10 on the split. Choices are made here, on validation, never on the held-out test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import table
from gist_mining import workdir
from gist_mining.storage import read_json
from train import run as train_command

SETTINGS = {
    "random batches, 1 negative": [],
    "task batches, 3 negatives": ["--task-batches", "--negatives-in-batch", "3"],
    "random batches, 1 negative, temperature 0.01": ["--temperature", "0.01"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("runs/sample"))
    parser.add_argument("--eval", type=Path, default=Path("data/sample/val"))
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--lr", default="2e-5")
    parser.add_argument("--temperature", default="0.05")
    parser.add_argument("--only", default=None, help="run one setting by name")
    args = parser.parse_args()
    rows = []
    for name, extra in SETTINGS.items():
        if args.only and name != args.only:
            continue
        scores = {}
        for variant, flags in (("plain", ["--guide-filter", "none"]), ("gist", [])):
            out = args.work / "experiments" / f"{name.replace(' ', '-').replace(',', '')}-{variant}"
            train_command.main(["--work", str(args.work), "--out", str(out), "--max-steps", str(args.max_steps), "--lr", args.lr,
                        "--temperature", args.temperature, "--eval", str(args.eval), *extra, *flags])
            record = read_json(out / workdir.TRAINING_RECORD)
            scores[variant] = record["eval_after"]["ndcg@10"]
            base = record["eval_before"]["ndcg@10"]
        rows.append((name, f"{base:.4f}", f"{scores['plain']:.4f}", f"{scores['gist']:.4f}",
                     f"{scores['gist'] - scores['plain']:+.4f}"))
        print(table(rows, ("setting", "base", "plain", "GIST", "GIST - plain")), flush=True)


if __name__ == "__main__":
    main()
