"""The mask stage on a real (tiny) embed work directory: search, exclusions, refilter, staleness, agreement with ST."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from conftest import make_pairs, pairs_with_second_positives, run_stage, st_range_max

from gist_mining.lists import PAD_ID
from gist_mining.mining.index import build_index
from gist_mining.mining.search import search_candidates
from gist_mining.workdir import load_embeddings
from pipeline import embed, mask


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("embedded")
    pairs_with_second_positives(90, seed=1, repeated=5).write_parquet(root / "pairs.parquet")
    pl.DataFrame({"text": [f"{w} corpus line" for w in ("water", "music", "road", "book", "tree")]}).write_parquet(
        root / "corpus.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--corpus", root / "corpus.parquet",
                     "--work", root / "w", "--guide", tiny_guide, "--texts-per-shard", 64) == 0
    return root / "w"


@pytest.fixture
def work(embedded, tmp_path):
    shutil.copytree(embedded, tmp_path / "w")
    return tmp_path / "w"


def mined(work) -> pl.DataFrame:
    return pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")


def candidates(work) -> pl.DataFrame:
    return pl.read_parquet(work / "candidates" / "*.parquet").sort("anchor_id")


def test_flat_search_equals_brute_force(work):
    assert run_stage(mask, "--work", work, "--k", 15, "--index", "flat") == 0
    ids, vectors = load_embeddings(work)
    by_id = dict(zip(ids.tolist(), vectors))
    texts = pl.read_parquet(work / "texts.parquet")
    pool = texts.filter("is_document")["text_id"].to_numpy()
    pool_vectors = np.stack([by_id[i] for i in pool])
    anchors = pl.read_parquet(work / "anchors.parquet")
    positives_of = anchors.group_by("query_id").agg("positive_id").rows_by_key("query_id", unique=True)
    for row in candidates(work).iter_rows(named=True):
        excluded = {row["query_id"], *positives_of[row["query_id"]][0]}
        scores = pool_vectors @ by_id[row["query_id"]]
        order = [i for i in np.argsort(-scores, kind="stable") if pool[i] not in excluded][:15]
        assert row["candidate_ids"] == pool[order].tolist()
        np.testing.assert_allclose(row["candidate_scores"], scores[order], atol=1e-5)
        assert row["positive_score"] == pytest.approx(float(by_id[row["query_id"]] @ by_id[row["positive_id"]]), abs=1e-5)


def test_own_query_and_all_positives_are_never_negatives(work):
    """With --include-queries every query is in the pool: its own text must still never come back."""
    assert run_stage(mask, "--work", work, "--k", 40, "--margin-strategy", "none", "--negatives-per-anchor", 40,
                     "--include-queries") == 0
    anchors = pl.read_parquet(work / "anchors.parquet")
    positives_of = anchors.group_by("query_id").agg("positive_id").rows_by_key("query_id", unique=True)
    table = mined(work)
    repeated = table.filter(pl.col("query_id").is_duplicated())
    assert repeated.height == 10
    other_queries = set(anchors["query_id"])
    assert any(other_queries & set(row) for row in table["negative_ids"])  # queries are in the pool
    for row in table.iter_rows(named=True):
        forbidden = {row["query_id"], *positives_of[row["query_id"]][0]}
        assert not forbidden & set(row["negative_ids"]) and not forbidden & set(row["false_negative_ids"])
        assert len(row["negative_ids"]) == len(set(row["negative_ids"]))


def test_given_negatives_are_scored(work):
    assert run_stage(mask, "--work", work, "--k", 10, "--margin-strategy", "absolute", "--margin", 0.0) == 0
    ids, vectors = load_embeddings(work)
    by_id = dict(zip(ids.tolist(), vectors))
    for row in candidates(work).filter(pl.col("given_negative_ids").list.len() > 0).iter_rows(named=True):
        expected = [float(by_id[row["query_id"]] @ by_id[g]) for g in row["given_negative_ids"]]
        np.testing.assert_allclose(row["given_negative_scores"], expected, atol=1e-5)
    for row in mined(work).iter_rows(named=True):
        for given, flag in zip(row["given_negative_ids"], row["given_negative_flagged"]):
            assert (given in row["false_negative_ids"]) == flag
            assert (given in row["negative_ids"]) == (not flag)


def test_refilter_equals_a_fresh_run(work, tmp_path):
    shutil.copytree(work, tmp_path / "fresh")
    new_rules = ["--margin-strategy", "absolute", "--margin", "0.02", "--negatives-per-anchor", "4", "--sampling", "random",
                 "--seed", "7", "--rank-min", "1"]
    assert run_stage(mask, "--work", work, "--k", 20) == 0
    assert run_stage(mask, "--work", work, "--k", 20, *new_rules) == 2  # other rules need --refilter
    assert run_stage(mask, "--work", work, "--k", 20, "--refilter", *new_rules) == 0
    assert run_stage(mask, "--work", tmp_path / "fresh", "--k", 20, *new_rules) == 0
    assert mined(work).equals(mined(tmp_path / "fresh"))
    summary = json.loads((work / "mined_summary.json").read_text())
    assert summary["rules"]["margin_strategy"] == "absolute" and summary["anchors"] == 95
    assert summary["per_task"].keys() == {"a", "b"}


def test_stale_candidates_refused(work, capsys):
    assert run_stage(mask, "--work", work, "--k", 10) == 0
    assert run_stage(mask, "--work", work, "--k", 12) == 2
    assert "other k" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--k", 12, "--overwrite") == 0
    assert candidates(work)["candidate_ids"].list.len().max() == 12


def test_refilter_without_candidates_is_an_error(work, capsys):
    assert run_stage(mask, "--work", work, "--refilter") == 2
    assert "no candidates/" in capsys.readouterr().err


def test_include_queries_adds_query_texts(work):
    assert run_stage(mask, "--work", work, "--k", 30, "--include-queries") == 0
    texts = pl.read_parquet(work / "texts.parquet")
    only_queries = set(texts.filter(pl.col("is_query") & ~pl.col("is_document"))["text_id"])
    found = set(candidates(work)["candidate_ids"].explode())
    assert found & only_queries


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_on_a_pool_where_they_miss(kind):
    """20 000 clustered vectors, k = 100: approximate search misses some true neighbours (so the test can
    tell), finds most, and every score it writes is the exact inner product of the stored vectors."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32))

    def clustered(n):
        x = centers[rng.integers(0, 50, n)] + rng.normal(scale=0.8, size=(n, 32))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    pool, queries, k = clustered(20_000), clustered(200), 100
    pool_ids, exclude = np.arange(20_000, dtype=np.int64) * 7 + 3, np.full((200, 1), PAD_ID, dtype=np.int64)
    exact_ids, _ = search_candidates(build_index(pool, "flat", k), queries, exclude, pool_ids, None, k)
    ids, scores = search_candidates(build_index(pool, kind, k), queries, exclude, pool_ids, pool, k)
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(exact_ids, ids)])
    assert {"ivf": 0.5, "hnsw": 0.9}[kind] <= recall < 1.0
    np.testing.assert_allclose(scores, np.einsum("nd,nkd->nk", queries, pool[(ids - 3) // 7]), atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()  # best first


def test_agrees_with_sentence_transformers_mine_hard_negatives(tmp_path, tiny_guide):
    """Same model, data and rules (relative margin 0.05, top sampling) give the same negatives.

    Pairs without given negatives and distinct queries, so the documented differences (we also exclude
    the anchor's own text, and exclude given negatives from the search's picks) do not arise.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    pairs = make_pairs(60, seed=3).select("query", "positive").unique("query", keep="first", maintain_order=True)
    pairs.write_parquet(tmp_path / "pairs.parquet")
    assert run_stage(embed, "--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", tiny_guide) == 0
    k, n = 20, 3
    assert run_stage(mask, "--work", tmp_path / "w", "--k", k, "--margin-strategy", "relative", "--margin", 0.05,
                     "--negatives-per-anchor", n, "--sampling", "top") == 0
    theirs = mine_hard_negatives(
        Dataset.from_dict({"query": pairs["query"].to_list(), "positive": pairs["positive"].to_list()}),
        SentenceTransformer(str(tiny_guide), device="cpu"), range_max=st_range_max(k), relative_margin=0.05, num_negatives=n,
        sampling_strategy="top", output_format="n-tuple", verbose=False,
    )
    text_of = dict(pl.read_parquet(tmp_path / "w" / "texts.parquet").select("text_id", "text").iter_rows())
    ours = {text_of[q]: [text_of[i] for i in negatives]
            for q, negatives in mined(tmp_path / "w").select("query_id", "negative_ids").iter_rows()}
    compared = 0
    for row in theirs:
        assert ours[row["query"]] == [row[f"negative_{i}"] for i in range(1, n + 1)]
        compared += 1
    # ST drops anchors with fewer than n negatives; ours keeps them with what was found
    assert compared == sum(len(v) == n for v in ours.values()) > 0
