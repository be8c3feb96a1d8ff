"""Mining rules against known false negatives: contamination, recall, negatives per anchor, hardness.

    python -m benchmarks.fn_quality                                   # data/fn_truth, the default guide
    python -m benchmarks.fn_quality --model all-MiniLM-L6-v2 --work runs/fn_truth-minilm

Embeds and searches data/fn_truth (data/build_fn_truth.py: bare polysemous lemmas whose other senses'
glosses are known false negatives) once, unless the work directory has candidates already; then re-applies
every rule of ``gist_mining.fn_quality.default_sweep`` to the stored candidates in this process and prints
one row per rule (definitions in gist_mining/fn_quality.py), the same split between anchors the guide can
and cannot judge (positive scored below the median of its k candidates), and the Pareto frontier of
contamination against negatives per anchor, drawn to WORK/report/fn_frontier.png. The truth file is copied
into the work directory, so `python -m pipeline.report --work WORK` draws the same plot.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import polars as pl

from benchmarks.common import ROOT, table
from gist_mining import fn_quality, workdir
from gist_mining.errors import UsageError
from gist_mining.mask.settings import CHUNK
from gist_mining.models import DEFAULT_GUIDE
from gist_mining.report import fn_frontier
from pipeline import embed, mask


def ensure_candidates(args) -> None:
    """Embed and search once; a work directory with candidates is reused whatever its mined rules."""
    try:
        workdir.checked_candidates_manifest(args.work)
        return
    except UsageError:
        pass
    started = time.perf_counter()
    embed.main(["--input", str(args.data / "pairs.parquet"), "--corpus", str(args.data / "corpus.parquet"),
                "--work", str(args.work), "--guide", args.model])
    mask.main(["--work", str(args.work), "--k", str(args.k), "--negatives-per-anchor", str(args.negatives_per_anchor)])
    print(f"embed + mask: {time.perf_counter() - started:.0f} s", file=sys.stderr)


def report_groups(groups: pl.DataFrame) -> None:
    """Contamination among anchors the guide can judge against those it cannot, rule by rule."""
    def side(cannot: bool, suffix: str) -> pl.DataFrame:
        part = groups.filter(pl.col("cannot_judge") == cannot)
        return part.select("rule", *(pl.col(c).alias(c + suffix)
                                     for c in ("anchors", "contamination", "negatives_per_anchor", "flagged_per_anchor")))
    wide = side(False, "_judged").join(side(True, "_unjudged"), on="rule", how="full", coalesce=True, maintain_order="left")
    judged, unjudged = (wide[c].fill_null(0).max() for c in ("anchors_judged", "anchors_unjudged"))
    print(f"\nanchors the guide cannot judge (positive below the median of its candidates): {unjudged} of "
          f"{judged + unjudged} ({unjudged / (judged + unjudged):.1%})")
    columns = ["rule", *(f"{c}_{side}" for c in ("contamination", "negatives_per_anchor", "flagged_per_anchor")
                         for side in ("judged", "unjudged"))]
    print(table(fn_quality.formatted(wide.fill_null(float("nan")), columns),
                ("rule", "contamination: judged", "cannot judge", "neg/anchor: judged", "cannot judge",
                 "flagged/anchor: judged", "cannot judge")))


def report_treatments(tallies: pl.DataFrame, header: tuple) -> None:
    """A positive-aware rule where the guide can judge the anchor, a rank rule (no margin) where it cannot."""
    judged = ("relative 0.05", "relative 0.05, rank-min 3", "relative 0.05, rank-min 10")
    combined = pl.concat([fn_quality.combine(tallies, rule, other) for rule in judged
                          for other in (rule, "rank-min 3", "rank-min 10", "rank-min 30")])
    print("\none rule where the guide can judge the anchor, another where it cannot:")
    print(table(fn_quality.formatted(fn_quality.rates(combined, ["rule"]), ["rule", *fn_quality.METRICS]), header))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "fn_truth")
    parser.add_argument("--work", type=Path, default=Path("runs/fn_truth"))
    parser.add_argument("--model", default=DEFAULT_GUIDE)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--negatives-per-anchor", type=int, default=3)
    args = parser.parse_args()
    ensure_candidates(args)
    shutil.copy(args.data / "truth.parquet", args.work / workdir.TRUTH)
    started = time.perf_counter()
    tallies = fn_quality.sweep(fn_quality.candidate_chunks(args.work, CHUNK),
                               fn_quality.read_truth(args.work / workdir.TRUTH),
                               fn_quality.default_sweep(args.negatives_per_anchor))
    overall = fn_quality.rates(tallies, ["rule"])
    print(f"{len(overall)} rules re-applied to {overall['anchors'][0]} anchors in {time.perf_counter() - started:.1f} s; "
          f"known false negatives reached by the search: {overall['known_reached_per_anchor'][0]:.2f} per anchor\n")
    header = ("rule", "contamination", "recall", "neg/anchor", f"short of {args.negatives_per_anchor}", "hardness",
              "flagged/anchor")
    print(table(fn_quality.formatted(overall, ["rule", *fn_quality.METRICS]), header))
    report_groups(fn_quality.rates(tallies, ["rule", "cannot_judge"]))
    report_treatments(tallies, header)
    frontier = fn_quality.pareto_frontier(overall)
    print("\nPareto frontier, contamination against negatives per anchor: " + ", ".join(frontier["rule"]))
    frontier = fn_quality.pareto_frontier(overall, maximize=("negatives_per_anchor", "hardness"))
    print("... and hardness as a third objective: " + ", ".join(frontier["rule"]))
    plot = args.work / workdir.FN_FRONTIER
    plot.parent.mkdir(parents=True, exist_ok=True)
    print(f"plot: {plot.parent / fn_frontier(overall, plot)}")


if __name__ == "__main__":
    main()
