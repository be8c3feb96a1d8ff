"""The streamed planner (gist_mining.planning) against the in-memory planner it replaced, kept here as the oracle:
the same texts.parquet and anchors.parquet, row for row, whatever the batch size and the ranges it cuts."""

from __future__ import annotations

import random
from itertools import pairwise

import numpy as np
import polars as pl
import pytest
from conftest import WORDS, read_corpus, read_pairs, sentence

from gist_mining import inputs, planning, workdir
from gist_mining.errors import InputError


def oracle_clean(anchors: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """The embed stage's clean_given_negatives as it was before planning streamed (on texts, all in memory)."""
    positives = anchors.group_by("query").agg(pl.col("positive").alias("positives_of_query"))
    given = anchors.select("anchor_id", "query", "negatives").explode("negatives").drop_nulls("negatives")
    kept = (
        given.join(positives, on="query", how="left", maintain_order="left")
        .filter((pl.col("negatives") != pl.col("query")) & ~pl.col("positives_of_query").list.contains(pl.col("negatives")))
        .unique(subset=["anchor_id", "negatives"], keep="first", maintain_order=True)
        .group_by("anchor_id", maintain_order=True)
        .agg("negatives")
    )
    cleaned = anchors.drop("negatives").join(kept, on="anchor_id", how="left", maintain_order="left").with_columns(
        pl.col("negatives").fill_null(pl.lit([], dtype=pl.List(pl.String))))
    return cleaned.select(anchors.columns), given.height - int(cleaned["negatives"].list.len().sum())


def oracle_plan(pairs: list[pl.DataFrame], corpora: list[list[str]], sources: list[str]):
    """The embed stage's plan_texts as it was before planning streamed."""
    anchors, dropped = oracle_clean(pl.concat(
        [frame.with_columns(pl.lit(source).alias("source"),
                            pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias("source_row"))
         for frame, source in zip(pairs, sources)]).with_row_index("anchor_id"))
    documents = pl.concat([anchors.get_column("positive"), anchors.get_column("negatives").explode().drop_nulls()]
                          + [pl.Series("text", corpus, dtype=pl.String) for corpus in corpora])
    texts = (pl.concat([pl.DataFrame({"text": anchors.get_column("query"), "is_query": True, "is_document": False}),
                        pl.DataFrame({"text": documents, "is_query": False, "is_document": True})])
             .group_by("text").agg(pl.col("is_query").any(), pl.col("is_document").any()))
    texts = (texts.with_columns(pl.Series("text_id", workdir.text_ids(texts.get_column("text").to_list())),
                                pl.col("text").str.len_chars().alias("n_chars"))
             .select("text_id", "text", "is_query", "is_document", "n_chars").sort("n_chars", "text_id"))

    def to_id(expr):
        return expr.replace_strict(texts.get_column("text"), texts.get_column("text_id"), return_dtype=pl.Int64)

    anchors = anchors.select(pl.col("anchor_id").cast(pl.Int64), "source", "source_row",
                             to_id(pl.col("query")).alias("query_id"), to_id(pl.col("positive")).alias("positive_id"),
                             pl.col("negatives").list.eval(to_id(pl.element())).alias("negative_ids"), "task")
    return texts, anchors, dropped


def messy_inputs(tmp_path, n: int = 700):
    """Two pairs files and a corpus with what planning must get right: texts repeated within and across batches
    and files, a query that is another row's positive or negative, negatives equal to the query or to one of
    its positives, repeated negatives, many texts of one length."""
    rng = random.Random(0)
    pool = [sentence(rng) for _ in range(n // 2)] + ["x" * 40 + str(i) for i in range(60)]  # one length, many texts
    rows = []
    for i in range(n):
        query, positive = rng.sample(pool, 2)  # a positive equal to its query is a bad row (test_bad_rows.py)
        negatives = rng.sample(pool, rng.randint(0, 3)) + rng.choice([[], [query], [positive], ["fixed negative"] * 2])
        rows.append({"query": query, "positive": positive, "negative": negatives or None, "task": rng.choice(["a", None])})
    frame = pl.DataFrame(rows)
    frame.slice(0, n // 2).write_parquet(tmp_path / "a.parquet")
    frame.slice(n // 2).write_ndjson(tmp_path / "b.jsonl")
    pl.DataFrame({"text": [rng.choice(pool) for _ in range(100)] + [" ".join(WORDS[:9])]}).write_csv(tmp_path / "c.csv")
    return [tmp_path / "a.parquet", tmp_path / "b.jsonl"], [tmp_path / "c.csv"]


@pytest.mark.parametrize("batch_rows, range_bytes", [(100_000, 256 << 20), (64, 900)], ids=["one-batch", "many"])
def test_streamed_plan_equals_the_in_memory_plan(tmp_path, monkeypatch, batch_rows, range_bytes):
    pairs, corpora = messy_inputs(tmp_path)
    expected_texts, expected_anchors, expected_dropped = oracle_plan(
        [read_pairs(p) for p in pairs], [read_corpus(p) for p in corpora], [str(p) for p in pairs])
    monkeypatch.setattr(inputs.files, "BATCH_ROWS", batch_rows)
    monkeypatch.setattr(planning, "RANGE_BYTES", range_bytes)
    planned, records = planning.read_inputs(pairs, corpora, tmp_path / "plan")
    texts, anchors = (pl.read_parquet(planned.path(n)) for n in (workdir.TEXTS, workdir.ANCHORS))
    assert texts.equals(expected_texts) and anchors.equals(expected_anchors)
    assert planned.dropped == expected_dropped > 0
    assert planned.counts == {"texts": texts.height, "anchors": anchors.height,
                              "queries": int(texts["is_query"].sum()), "documents": int(texts["is_document"].sum())}
    assert [r["kind"] for r in records] == ["pairs", "pairs", "corpus"]
    if batch_rows == 64:  # the ranges were many, and the one length of many texts was cut by id
        ranges = planning.text_ranges(pl.DataFrame({"n_chars": expected_texts["n_chars"],
                                                    "bytes": expected_texts["text"].str.len_bytes().cast(pl.Int64)}),
                                      range_bytes)
        assert len(ranges) > 5 and any(first == last and (low, high) != planning.INT64 for first, last, low, high in ranges)


def test_text_ranges_cover_every_length_and_id_once():
    lengths = pl.DataFrame({"n_chars": [1, 2, 3, 3, 9, 12], "bytes": [10, 10, 500, 500, 10, 30]}).cast({"n_chars": pl.UInt32})
    ranges = planning.text_ranges(lengths, budget=100)
    # 1-2 together, length 3 (1000 bytes) cut into 10 id ranges, 9-12 together
    assert ranges[0] == (1, 2, *planning.INT64) and ranges[-1] == (9, 12, *planning.INT64)
    cut = [r for r in ranges if r[0] == r[1] == 3]
    assert len(cut) == 10 and cut[0][2] == planning.INT64[0] and cut[-1][3] == planning.INT64[1]
    assert all(a[3] + 1 == b[2] for a, b in pairwise(cut))  # contiguous, no id in two ranges
    ids = np.random.default_rng(0).integers(*planning.INT64, 10_000)
    hits = sum(((ids >= low) & (ids <= high)).sum() for _, _, low, high in cut)
    assert hits == len(ids)


def test_bad_rows_in_a_late_batch_name_their_file_and_row(tmp_path, monkeypatch):
    monkeypatch.setattr(inputs.files, "BATCH_ROWS", 10)
    rows = [{"query": f"q {i}", "positive": f"p {i}"} for i in range(35)]
    rows[27]["positive"] = "  "
    pl.DataFrame(rows).write_parquet(tmp_path / "a.parquet")
    with pytest.raises(InputError) as caught:
        planning.read_inputs([tmp_path / "a.parquet"], [], tmp_path / "plan")
    assert caught.value.problems == [f"{tmp_path / 'a.parquet'}: row 28: column 'positive' is empty"]
    assert not (tmp_path / "plan" / workdir.TEXTS).exists() and not (tmp_path / "plan" / workdir.ANCHORS).exists()
