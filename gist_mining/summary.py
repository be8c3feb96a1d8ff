"""The mining summary: what a user checks before training on mined tables."""

from __future__ import annotations

import polars as pl

from gist_mining.margin import is_unjudged

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _quantiles(frame: pl.LazyFrame, column: str, explode: bool) -> dict:
    values = frame.select(pl.col(column).explode() if explode else pl.col(column)).drop_nulls()
    row = values.select(
        [pl.col(column).quantile(q).alias(f"q{int(q * 100):02d}") for q in QUANTILES]
        + [pl.col(column).mean().alias("mean"), pl.len().alias("count")]
    ).collect()
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.row(0, named=True).items()}


def summarize(mined: pl.LazyFrame, num_negatives: int) -> dict:
    counts = mined.select(
        pl.col("anchor_id"),
        pl.col("task"),
        pl.col("n_candidates"),
        pl.col("negative_ids").list.len().alias("negatives"),
        pl.col("false_negative_ids").list.len().alias("false_negatives"),
        pl.col("given_negative_flagged").list.sum().alias("given_flagged"),
        is_unjudged(pl.col("candidates_above_positive"), pl.col("n_candidates")).alias("unjudged"),
    )
    totals = counts.select(
        pl.len().alias("anchors"),
        pl.col("n_candidates").mean().alias("candidates_per_anchor"),
        pl.col("negatives").mean().alias("negatives_per_anchor"),
        pl.col("false_negatives").mean().alias("false_negatives_per_anchor"),
        (pl.col("negatives") < num_negatives).sum().alias("anchors_short_of_negatives"),
        pl.col("given_flagged").sum().alias("given_negatives_flagged"),
        pl.col("unjudged").sum().alias("anchors_the_guide_cannot_judge"),
    ).collect().row(0, named=True)
    per_task = (
        counts.group_by("task")
        .agg(pl.len().alias("anchors"), pl.col("false_negatives").mean().alias("false_negatives_per_anchor"),
             pl.col("negatives").mean().alias("negatives_per_anchor"),
             (pl.col("negatives") < num_negatives).sum().alias("anchors_short_of_negatives"),
             pl.col("unjudged").sum().alias("anchors_the_guide_cannot_judge"))
        .sort("task")
        .collect()
    )
    return {
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in totals.items()},
        "per_task": {row.pop("task"): {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
                     for row in per_task.iter_rows(named=True)},
        "score_quantiles": {
            "positive": _quantiles(mined, "positive_score", explode=False),
            "negative": _quantiles(mined, "negative_scores", explode=True),
            "false_negative": _quantiles(mined, "false_negative_scores", explode=True),
        },
    }
