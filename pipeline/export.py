"""Export mined negatives in sentence-transformers' formats, as mine_hard_negatives returns them.

    python -m pipeline.export --work runs/sample --format triplet --out runs/sample-triplets.parquet
    python -m pipeline.export --work runs/sample --format n-tuple-scores --out runs/sample-ntuple   # a datasets folder

The columns are those of sentence_transformers.util.mine_hard_negatives(..., output_format=FORMAT); scores are
the guide's, from mined/. In Python: gist_mining.export.to_dataset(work, format) returns a datasets.Dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gist_mining import cli
from gist_mining.export import FORMATS, SHORT, build, output_kind, save
from gist_mining.settings import HelpFormatter


def build_parser(prog: str = "python -m pipeline.export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="a work directory with mined/ (pipeline.mask)")
    # Checked by gist_mining.export, so that a bad value is one line of error like every other problem.
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--out", required=True, type=Path,
                        help="FILE.parquet, FILE.jsonl, or a path without a suffix: a datasets folder (save_to_disk)")
    parser.add_argument("--negatives-per-anchor", type=int, default=None, metavar="N",
                        help="N negatives per anchor, each anchor's first N (default and most: the mining run's)")
    parser.add_argument("--short", default=SHORT[0], metavar="{drop,keep}",
                        help="anchors with fewer than N negatives: drop (default) leaves them out; keep exports them "
                             "with those they have, as sentence-transformers does for triplet, labeled-pair and "
                             "labeled-list (n-tuple formats need N per row: drop only)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out when it exists")
    return parser


def main(argv=None, prog: str = "python -m pipeline.export") -> None:
    args = build_parser(prog).parse_args(argv)
    output_kind(args.out, args.overwrite)  # a bad --out fails before the work
    export = build(args.work, args.format, args.negatives_per_anchor, args.short)
    save(export.table, args.out, args.overwrite)
    fate = "dropped" if args.short == "drop" else "kept with the negatives they have"
    print(f"export: {export.table.num_rows} {args.format} rows to {args.out}; {export.short} of {export.anchors} "
          f"anchors have fewer than {export.num_negatives} negatives: {fate}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
