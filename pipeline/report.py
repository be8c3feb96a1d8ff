"""A one-page HTML report of a work directory: what the guide kept, what it masked, and how training went.

    python -m pipeline.report --work runs/sample            # -> runs/sample/report/index.html

Plots (PNG beside the page): histograms of the scores the rules read (the guide's, or a cross-encoder's
with --score rescore) of positives, kept hard negatives and false negatives; false negatives per anchor by
task; hard negatives found per anchor; for every training run under DIR/models/ (or given with --run), the
loss, the masked fraction and eval NDCG@10 over steps; when the pairs have known false negatives (--truth
PATH, or WORK/fn_truth.parquet: data/build_fn_truth.py), contamination against negatives per anchor for
this run's rules and gist_mining.fn_quality's sweep.
Then a few anchors as text with their positive, hard negatives and false negatives, and the held-out
table from pipeline.run when there is one.
The command line of gist_mining.report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gist_mining import cli, workdir
from gist_mining.report import write_report
from gist_mining.settings import HelpFormatter


def build_parser(prog: str = "python -m pipeline.report") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: WORK/report")
    p.add_argument("--run", type=Path, action="append", default=[], help="a train.run --out folder (repeatable)")
    p.add_argument("--examples", type=int, default=6, help="anchors shown with their negatives")
    p.add_argument("--seed", type=int, default=42, help="seed of every random draw of the stage (the examples shown)")
    p.add_argument("--truth", type=Path, default=None,
                   help=f"known false negatives of the pairs (data/build_fn_truth.py); default WORK/{workdir.TRUTH} if present")
    return p


def main(argv=None, prog: str = "python -m pipeline.report") -> None:
    args = build_parser(prog).parse_args(argv)
    page = write_report(args.work, args.out, args.run, args.examples, args.seed, args.truth)
    print(f"report: {page}")


if __name__ == "__main__":
    cli.run(main)
