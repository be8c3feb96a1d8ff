"""How well mining rules keep known false negatives out of the hard negatives, measured against ground truth.

A truth frame (``data/build_fn_truth.py`` writes one) maps pairs, by ``query_id`` and ``positive_id``, to
``false_negative_ids``: text ids known to answer the query as well as its positive. Rules are re-applied
to the stored candidates with ``gist_mining.mining.select``: one search, any number of rules. For each rule,
over the anchors the truth covers:

  contamination         chosen hard negatives that are known false negatives / chosen hard negatives
  recall                known false negatives among the k candidates that the rule flags as false negatives
                        / known false negatives among the k candidates (those the search reached)
  negatives_per_anchor  chosen hard negatives per anchor; anchors_short: anchors with fewer than N
  hardness              mean over chosen negatives of (negative's guide score - its anchor's positive score):
                        0 is as close to the query as the positive, below 0 easier, above 0 closer than it
  flagged_per_anchor    false negatives the rule flags (masked in training) per anchor, known or not

An anchor the guide "cannot judge" is one whose positive the guide scores below the median of its k
candidates: to the guide most of its nearest texts fit the query better than the labelled answer, so a
positive-aware threshold flags nearly all of them and tells little about which are negatives.
Metrics are ratios of sums, so chunks are tallied apart and added (``tally`` then ``rates``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.mining import MiningRules, select

TRUTH_SCHEMA = {"query_id": pl.Int64, "positive_id": pl.Int64, "false_negative_ids": pl.List(pl.Int64)}
SUMS = ("anchors", "negatives", "known_chosen", "reached", "flagged", "flagged_reached", "gap_sum", "anchors_short")
METRICS = ("contamination", "recall", "negatives_per_anchor", "anchors_short", "hardness", "flagged_per_anchor")


def default_sweep(num_negatives: int) -> dict[str, MiningRules]:
    """The rules compared: naive top-k, positive-aware margins, score caps and floors, rank skips."""
    def rule(strategy="none", margin=0.0, **kw):
        return MiningRules(strategy, margin, num_negatives=num_negatives, **kw)
    return {
        "top-k (none)": rule(),
        **{f"relative {m}": rule("relative", m) for m in (0.0, 0.05, 0.1)},
        **{f"absolute {m}": rule("absolute", m) for m in (0.05, 0.1, 0.2)},
        **{f"max-score {c}": rule(max_score=c) for c in (0.7, 0.6, 0.5)},
        **{f"relative 0.05, min-score {f}": rule("relative", 0.05, min_score=f) for f in (0.3, 0.4)},
        **{f"rank-min {r}": rule(rank_min=r) for r in (3, 10, 30)},
        **{f"relative 0.05, rank-min {r}": rule("relative", 0.05, rank_min=r) for r in (3, 10)},
        **{f"relative 0.05, rank-min 3, unjudged rank-min {r}": rule("relative", 0.05, rank_min=3, unjudged_rank_min=r)
           for r in (3, 10)},
        "relative 0.05, random": rule("relative", 0.05, sampling="random"),
    }


def read_truth(path: Path) -> pl.DataFrame:
    """A truth file's query_id, positive_id, false_negative_ids; one row per pair."""
    truth = pl.read_parquet(path)
    missing = [c for c in TRUTH_SCHEMA if c not in truth.columns]
    if missing:
        raise UsageError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(truth.columns)})")
    truth = truth.select(pl.col(c).cast(t) for c, t in TRUTH_SCHEMA.items())
    if truth.select(pl.struct("query_id", "positive_id").is_duplicated().any()).item():
        raise UsageError(f"{path}: a (query, positive) pair appears twice")
    return truth


def truth_path(work: Path, given: Path | None) -> Path | None:
    """The truth file passed, else the work directory's own (workdir.TRUTH) when it has one."""
    own = Path(work) / workdir.TRUTH
    return given if given is not None else (own if own.is_file() else None)


def candidate_chunks(work: Path, size: int) -> Iterator[pa.Table]:
    """candidates/ in chunks of ``size`` anchors (gist_mining.mask.settings.CHUNK), each shard checked against its
    manifest first."""
    for path in workdir.verified(work, workdir.checked_candidates_manifest(work), "search"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            yield pa.Table.from_batches([batch])


def anchor_stats(candidates: pl.DataFrame, mined: pl.DataFrame, truth: pl.DataFrame) -> pl.DataFrame:
    """Per anchor the truth covers: the counts behind every metric, and whether the guide can judge it.

    ``candidates``: anchor_id, query_id, positive_id, positive_score, candidate_ids, candidate_scores;
    ``mined``: anchor_id, negative_ids, negative_scores, false_negative_ids (``select``'s output).
    """
    known = pl.col("known_ids")
    reached = pl.col("candidate_ids").list.set_intersection(known)
    return (
        candidates.join(truth.rename({"false_negative_ids": "known_ids"}), on=["query_id", "positive_id"])
        .join(mined.select("anchor_id", "negative_ids", "negative_scores", "false_negative_ids"), on="anchor_id")
        .select(
            "anchor_id",
            pl.col("negative_ids").list.len().alias("negatives"),
            pl.col("negative_ids").list.set_intersection(known).list.len().alias("known_chosen"),
            reached.list.len().alias("reached"),
            pl.col("false_negative_ids").list.len().alias("flagged"),
            pl.col("false_negative_ids").list.set_intersection(reached).list.len().alias("flagged_reached"),
            (pl.col("negative_scores").list.sum().cast(pl.Float64)
             - pl.col("negative_ids").list.len() * pl.col("positive_score").cast(pl.Float64)).alias("gap_sum"),
            (pl.col("positive_score") < pl.col("candidate_scores").list.median()).fill_null(False).alias("cannot_judge"),
        )
    )


def tally(stats: pl.DataFrame, num_negatives: int) -> pl.DataFrame:
    """``anchor_stats`` summed, one row per value of cannot_judge (absent groups have no row)."""
    return stats.group_by("cannot_judge").agg(
        pl.len().alias("anchors"), pl.col("negatives").sum(), pl.col("known_chosen").sum(),
        pl.col("reached").sum(), pl.col("flagged").sum(), pl.col("flagged_reached").sum(), pl.col("gap_sum").sum(),
        (pl.col("negatives") < num_negatives).sum().alias("anchors_short"))


def rates(tallies: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Tallies added up per ``by`` (first-seen order) and turned into the metrics; 0/0 is NaN."""
    sums = tallies.group_by(by, maintain_order=True).agg(pl.col(c).sum().cast(pl.Float64) for c in SUMS)
    return sums.select(
        *by, pl.col("anchors").cast(pl.Int64),
        (pl.col("known_chosen") / pl.col("negatives")).alias("contamination"),
        (pl.col("flagged_reached") / pl.col("reached")).alias("recall"),
        (pl.col("negatives") / pl.col("anchors")).alias("negatives_per_anchor"),
        pl.col("anchors_short").cast(pl.Int64),
        (pl.col("gap_sum") / pl.col("negatives")).alias("hardness"),
        (pl.col("flagged") / pl.col("anchors")).alias("flagged_per_anchor"),
        (pl.col("reached") / pl.col("anchors")).alias("known_reached_per_anchor"),
    )


def sweep(chunks: Iterable[pa.Table], truth: pl.DataFrame, rules: dict[str, MiningRules]) -> pl.DataFrame:
    """Tallies per rule and cannot_judge over candidate chunks (CANDIDATE_SCHEMA), every rule on each chunk."""
    parts = []
    for chunk in chunks:
        candidates = pl.from_arrow(chunk)
        for name, rule in rules.items():
            stats = anchor_stats(candidates, pl.from_arrow(select(chunk, rule)), truth)
            parts.append(tally(stats, rule.num_negatives).with_columns(pl.lit(name).alias("rule")))
    tallies = pl.concat(parts) if parts else pl.DataFrame()
    if tallies.is_empty() or tallies["anchors"].sum() == 0:
        raise UsageError("the truth file matches no anchor (query and positive) of the work directory")
    return tallies


def combine(tallies: pl.DataFrame, judged: str, cannot_judge: str) -> pl.DataFrame:
    """Tallies of one rule on the anchors the guide can judge and another on those it cannot, as one rule."""
    return tallies.filter(((pl.col("rule") == judged) & ~pl.col("cannot_judge"))
                          | ((pl.col("rule") == cannot_judge) & pl.col("cannot_judge"))).with_columns(
        pl.lit(f"{judged}; cannot judge: {cannot_judge}").alias("rule"))


def formatted(frame: pl.DataFrame, columns: list[str]) -> list[tuple[str, ...]]:
    """Rows to print: floats to 3 decimals, NaN (a rule that chose no negative) as n/a."""
    def cell(value):
        return ("n/a" if value != value else f"{value:.3f}") if isinstance(value, float) else str(value)
    return [tuple(cell(v) for v in row) for row in frame.select(columns).iter_rows()]


def pareto_frontier(points: pl.DataFrame, minimize: tuple[str, ...] = ("contamination",),
                    maximize: tuple[str, ...] = ("negatives_per_anchor",)) -> pl.DataFrame:
    """The points no other beats (as good on every objective, better on one), by the first objective.

    Of exactly equal points only the first is kept; points with a NaN objective are left out.
    """
    columns = [*minimize, *maximize]
    points = points.filter(pl.all_horizontal(pl.col(c).is_not_nan() for c in columns))
    # Every objective as "higher is better".
    v = np.column_stack([-points[c].to_numpy() for c in minimize] + [points[c].to_numpy() for c in maximize])
    at_least = (v[:, None, :] >= v[None, :, :]).all(axis=2)  # [i, j]: i is as good as j everywhere
    dominated = (at_least & (v[:, None, :] > v[None, :, :]).any(axis=2)).any(axis=0)
    repeated = np.triu(at_least & at_least.T, k=1).any(axis=0)
    return points.filter(pl.Series(~dominated & ~repeated)).sort(minimize[0] if minimize else maximize[0])
