"""Stage 2: FAISS search, positive-aware hard negatives and false-negative masks, all with guide scores.

    python -m pipeline.mask --work runs/sample
    python -m pipeline.mask --work runs/sample --refilter --margin-strategy absolute --margin 0.1
    python -m pipeline.mask --work runs/sample --rescore-model cross-encoder/ms-marco-MiniLM-L6-v2 --score rescore
    python -m pipeline.mask --work runs/sample-v2 --update-from runs/sample   # after pairs were added

Reads the embed stage's work directory and writes:
  index/            the FAISS index over the candidate pool and its pool ids
  candidates/       per anchor: k nearest candidate text_ids with exact guide scores, positive score and
                    given negatives with scores (and a cross-encoder's scores of the same pairs, with
                    --rescore-model); everything a later rule needs without a new search
  mined/            per anchor: hard negatives, false negatives, flags on given negatives, all with scores
  mined_summary.json
--refilter recomputes mined/ from candidates/ under new rules, without embeddings or search.
--update-from keeps an earlier run's candidates where they still hold and searches them only against the texts
new to the pool (gist_mining.update).
The command line of gist_mining.mask (settings, plan, search, select, stage).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from gist_mining import cli, rescore
from gist_mining.executor import ExecutorSettings
from gist_mining.mask import SearchSettings, run_mask
from gist_mining.mining import MiningRules
from gist_mining.settings import HelpFormatter, add_options, dest_of, from_args


def build_parser(prog: str = "python -m pipeline.mask") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="work directory (pipeline.embed's)")
    # Search settings parse to None when not given, so that --refilter can tell a given one from a default.
    add_options(parser.add_argument_group("search (--refilter takes these from candidates/)"), SearchSettings,
                unset_default=tuple(f.name for f in fields(SearchSettings)))
    add_options(parser.add_argument_group("mining rules"), MiningRules)
    parser.add_argument("--refilter", action="store_true",
                        help="recompute mined/ from candidates/ under new rules; search settings come from candidates/")
    parser.add_argument("--overwrite", action="store_true", help="search again, removing candidates/ and what follows")
    parser.add_argument("--update-from", type=Path, default=None, metavar="EARLIER_WORK",
                        help="an earlier work directory mined with the same guide, k and index, e.g. before pairs were "
                             "added: its anchors keep their candidates, searched only against texts new to the pool "
                             "(exact index: equal to a full search); see gist_mining.update")
    rescore.add_arguments(parser)
    add_options(parser.add_argument_group("executor"), ExecutorSettings)
    return parser


def main(argv=None, prog: str = "python -m pipeline.mask") -> None:
    args = build_parser(prog).parse_args(argv)
    given = {f.name: getattr(args, dest_of(f)) for f in fields(SearchSettings) if getattr(args, dest_of(f)) is not None}
    run_mask(args.work, given, from_args(MiningRules, args),
             rescore_settings=from_args(rescore.RescoreSettings, args) if args.rescore_model else None,
             refilter=args.refilter, overwrite=args.overwrite, update_from=args.update_from,
             executor=from_args(ExecutorSettings, args))


if __name__ == "__main__":
    cli.run(main)
