"""Mined negatives in the layouts sentence-transformers' ``mine_hard_negatives`` returns, per ``output_format``.

Column names, order and Arrow types are those ``mine_hard_negatives`` builds (``Dataset.from_dict`` of
Python lists: string, int64, float64 and 32-bit-offset lists), with scores from the guide as mined:

  triplet         query, positive, negative                 one row per (anchor, negative)
  n-tuple         query, positive, negative_1 .. negative_N one row per anchor
  n-tuple-scores  n-tuple's columns, scores                 scores: [positive, negative_1 .. negative_N]
  labeled-pair    query, positive, label                    per query its positives (1), then each negative once
                                                            (0); "positive" holds both, as in sentence-transformers
  labeled-list    query, positive, labels                   positive: [positive, negatives...], labels: [1, 0, ...]

Rows come in sentence-transformers' order: queries by first appearance, a query's anchors in input order,
negatives as mined (kept given negatives first, then by guide score). Anchors with fewer than N negatives:
``short="drop"`` leaves them out of every format; ``short="keep"`` exports them with those they have, as
sentence-transformers does for triplet, labeled-pair and labeled-list (one with none gives no triplet or
list row; in labeled-pair its positive row stays). n-tuple rows need N negatives each: only "drop".
Unlike sentence-transformers, each anchor (input row) keeps its own negatives and a repeated input row is
not merged, except in labeled-pair, where each (query, document) pair appears once.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.storage import commit, tmp_name, write_parquet_atomic

FORMATS = ("triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list")
SHORT = ("drop", "keep")  # what becomes of anchors short of N negatives; the first is the default
OUTPUTS = {".parquet": "parquet", ".jsonl": "jsonl", "": "datasets"}
MINED_COLUMNS = ["anchor_id", "query_id", "positive_id", "positive_score", "negative_ids", "negative_scores"]


@dataclass(frozen=True)
class Export:
    table: pa.Table
    num_negatives: int
    anchors: int  # in mined/
    short: int  # anchors with fewer than num_negatives negatives, dropped or kept as asked


def to_dataset(work: Path, format: str = "triplet", num_negatives: int | None = None, short: str = SHORT[0]):
    """The mined negatives as a ``datasets.Dataset`` in ``format``; it feeds ``SentenceTransformerTrainer`` as is.

    ``num_negatives`` defaults to the mining run's; fewer takes each anchor's first ones.
    """
    from datasets import Dataset

    return Dataset(build(work, format, num_negatives, short).table)


def build(work: Path, format: str, num_negatives: int | None = None, short: str = SHORT[0]) -> Export:
    """The export as an Arrow table with sentence-transformers' types, and what was left out."""
    if format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if short not in SHORT:
        raise UsageError(f"--short must be drop or keep, not {short!r}")
    if format.startswith("n-tuple") and short == "keep":
        raise UsageError(f"--short keep does not fit {format}: every row has exactly N negative columns, and "
                         "padding them would hand losses empty texts; use --short drop or a lower --negatives-per-anchor")
    rows, n, anchors, n_short = mined_rows(Path(work), num_negatives, short)
    layout = {"triplet": _triplet, "n-tuple": n_tuple, "n-tuple-scores": lambda r, k: n_tuple(r, k, scores=True),
              "labeled-pair": _labeled_pair, "labeled-list": _labeled_list}[format]
    return Export(as_arrow(layout(rows, n)), n, anchors, n_short)


def negatives_wanted(work: Path, manifest: workdir.MinedManifest, num_negatives: int | None) -> int:
    """N, the negatives per anchor asked for (None: as many as were mined), refused in one line past what was mined."""
    mined_n = manifest.rules.num_negatives
    n = mined_n if num_negatives is None else num_negatives
    if n < 1:
        raise UsageError(f"--negatives-per-anchor must be at least 1, not {n}")
    if n > mined_n:
        raise UsageError(f"--negatives-per-anchor {n}: mined/ holds at most {mined_n} negatives per anchor; mine more with "
                         f"`python -m pipeline.mask --work {work} --refilter --negatives-per-anchor {n}`")
    return n


def mined_rows(work: Path, num_negatives: int | None, short: str) -> tuple[pl.DataFrame, int, int, int]:
    """Mined anchors in sentence-transformers' order with their texts, each cut to its first N negatives."""
    manifest = workdir.checked_mined_manifest(work)
    n = negatives_wanted(work, manifest, num_negatives)
    mined = pl.read_parquet(workdir.verified(work, manifest, "mine"), columns=MINED_COLUMNS).with_columns(
        pl.col("negative_ids", "negative_scores").list.head(n))
    anchors, is_short = mined.height, pl.col("negative_ids").list.len() < n
    n_short = mined.select(is_short.sum()).item()
    if short == "drop":
        mined = mined.filter(~is_short)
    texts = workdir.read_table(work, workdir.TEXTS, ["text_id", "text"])

    def text(ids: pl.Expr) -> pl.Expr:
        return ids.replace_strict(texts["text_id"], texts["text"], return_dtype=pl.String)

    rows = mined.with_columns(pl.col("anchor_id").min().over("query_id").alias("first_anchor")).sort(
        "first_anchor", "anchor_id").with_columns(
        text(pl.col("query_id")).alias("query"), text(pl.col("positive_id")).alias("positive"),
        pl.col("negative_ids").list.eval(text(pl.element())).alias("negatives"))
    return rows, n, anchors, n_short


def _triplet(rows: pl.DataFrame, n: int) -> pl.DataFrame:
    has = rows.filter(pl.col("negatives").list.len() > 0)  # an empty list explodes to a null row in polars 1
    return has.select("query", "positive", pl.col("negatives").alias("negative")).explode("negative")


def n_tuple(rows: pl.DataFrame, n: int, scores: bool = False) -> pl.DataFrame:
    columns = [pl.col("negatives").list.get(i).alias(f"negative_{i + 1}") for i in range(n)]
    if scores:  # the guide's, as mined: [positive, negative_1 .. negative_N]
        columns.append(pl.concat_list("positive_score", "negative_scores").cast(pl.List(pl.Float64)).alias("scores"))
    return rows.select("query", "positive", *columns)


def _labeled_pair(rows: pl.DataFrame, n: int) -> pl.DataFrame:
    positives = rows.select("first_anchor", "query_id", "query", pl.col("positive_id").alias("doc_id"),
                            pl.col("positive").alias("doc"), pl.lit(1, pl.Int64).alias("label"))
    negatives = rows.select("first_anchor", "query_id", "query", pl.col("negative_ids").alias("doc_id"),
                            pl.col("negatives").alias("doc"), pl.lit(0, pl.Int64).alias("label"))
    negatives = negatives.filter(pl.col("doc").list.len() > 0).explode("doc_id", "doc")
    # Per query: its positives, then its negatives; a stable sort keeps anchor and negative order.
    pairs = pl.concat([positives, negatives]).sort("first_anchor", "label", descending=[False, True],
                                                   maintain_order=True)
    return pairs.unique(["query_id", "doc_id"], keep="first", maintain_order=True).select(
        "query", pl.col("doc").alias("positive"), "label")


def _labeled_list(rows: pl.DataFrame, n: int) -> pl.DataFrame:
    count = pl.col("negatives").list.len()
    return rows.filter(count > 0).select(
        "query", pl.concat_list("positive", "negatives").alias("positive"),
        pl.concat_list(pl.lit(1, pl.Int64), pl.lit(0, pl.Int64).repeat_by(count)).alias("labels"))


def _st_type(arrow_type: pa.DataType) -> pa.DataType:
    # Dataset.from_dict builds 32-bit offsets (string, list); polars hands out 64-bit ones (large_*).
    if pa.types.is_large_list(arrow_type):
        return pa.list_(_st_type(arrow_type.value_type))
    return pa.string() if pa.types.is_large_string(arrow_type) else arrow_type


def as_arrow(frame: pl.DataFrame) -> pa.Table:
    table = frame.to_arrow()
    schema = pa.schema([(field.name, _st_type(field.type)) for field in table.schema])
    # Cast in slices: one 32-bit-offset chunk holds at most 2 GiB of text.
    return pa.Table.from_batches(table.to_batches(max_chunksize=65_536), table.schema).cast(schema)


def output_kind(out: Path, overwrite: bool) -> str:
    """parquet, jsonl or datasets (a folder written by save_to_disk), from ``out``'s suffix."""
    out = Path(out)
    if out.suffix not in OUTPUTS:
        raise UsageError(f"--out {out}: use a .parquet or .jsonl file, or a path without a suffix for a "
                         "datasets folder (save_to_disk)")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} exists; pass --overwrite to replace it")
    return OUTPUTS[out.suffix]


def save(table: pa.Table, out: Path, overwrite: bool = False) -> None:
    """Write ``table`` to ``out`` under a temporary name, then rename it into place."""
    out = Path(out)
    kind = output_kind(out, overwrite)
    if out.is_dir() or (kind == "datasets" and out.exists()):
        _remove(out)  # os.replace cannot rename over a folder, nor a folder over a file
    if kind == "parquet":
        write_parquet_atomic(table, out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(out)
    try:
        if kind == "jsonl":
            pl.from_arrow(table).write_ndjson(tmp)
        else:
            from datasets import Dataset

            Dataset(table).save_to_disk(str(tmp))
        commit(tmp, out)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
