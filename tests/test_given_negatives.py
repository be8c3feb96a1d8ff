"""pipeline.mask --negatives-from given (GISTEmbed's own setting): no pool search, only the given negatives, each
judged by the guide under the positive-aware rule; checked against scores computed in numpy from the stored vectors."""

from __future__ import annotations

import random
import shutil

import numpy as np
import polars as pl
import pytest
from conftest import make_pairs, run_stage, sentence
from test_mask import mined

from gist_mining import workdir
from gist_mining.margin import false_negative_threshold
from gist_mining.workdir import load_embeddings
from pipeline import embed, mask


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_guide):
    """Pairs with 1 to 3 given negatives, some of them near-copies of the positive (the guide flags those), queries
    asked again with a second positive, and corpus texts that a pool search would find."""
    root = tmp_path_factory.mktemp("given")
    rng = random.Random(3)
    pairs = make_pairs(60, seed=5).with_columns(pl.Series("negative", [
        [sentence(rng) for _ in range(rng.randint(1, 3))] + ([f"{p} red"] if i % 4 == 0 else [])
        for i, p in enumerate(make_pairs(60, seed=5)["positive"])]))
    pairs = pl.concat([pairs, pairs.head(6).with_columns(pl.col("positive") + " again")])
    pairs.write_parquet(root / "pairs.parquet")
    pl.DataFrame({"text": [sentence(rng) for _ in range(40)]}).write_parquet(root / "corpus.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--corpus", root / "corpus.parquet",
                     "--work", root / "w", "--guide", tiny_guide) == 0
    return root / "w"


@pytest.fixture
def work(embedded, tmp_path):
    shutil.copytree(embedded, tmp_path / "w")
    return tmp_path / "w"


def oracle(work, strategy: str, margin: float, n: int) -> dict[int, tuple[list, list]]:
    """Per anchor, (kept negatives, false negatives) by brute force: the guide's score of each given negative with
    the query, against the threshold under the query's weakest positive; the first n unflagged kept."""
    ids, vectors = load_embeddings(work)
    vector = dict(zip(ids.tolist(), vectors.astype(np.float64)))
    anchors = pl.read_parquet(work / "anchors.parquet")
    positives = anchors.group_by("query_id").agg("positive_id").rows_by_key("query_id", unique=True)
    out = {}
    for row in anchors.iter_rows(named=True):
        q = vector[row["query_id"]]
        weakest = min(float(q @ vector[p]) for p in positives[row["query_id"]][0])
        threshold = false_negative_threshold(np.float32(weakest), strategy, margin)
        scores = [float(q @ vector[g]) for g in row["negative_ids"]]
        flagged = [s > threshold for s in scores]
        kept = [g for g, f in zip(row["negative_ids"], flagged) if not f][:n]
        out[row["anchor_id"]] = (kept, [g for g, f in zip(row["negative_ids"], flagged) if f])
    return out


def assert_matches_oracle(work, strategy: str, margin: float, n: int) -> None:
    table, expected = mined(work), oracle(work, strategy, margin, n)
    assert table["anchor_id"].to_list() == sorted(expected)
    for row in table.iter_rows(named=True):
        assert (row["negative_ids"], row["false_negative_ids"]) == expected[row["anchor_id"]], row["anchor_id"]
    flagged = sum(len(f) for _, f in expected.values())
    kept = sum(len(k) for k, _ in expected.values())
    assert flagged > 5 and kept > 20  # both outcomes occur: the test can fail either way
    assert table["n_candidates"].sum() == 0 and (table["negative_ranks"].list.eval(pl.element() == -1).list.all()).all()


def test_only_given_negatives_judged_by_the_guide_no_search(work):
    assert run_stage(mask, "--work", work, "--negatives-from", "given") == 0
    assert_matches_oracle(work, "relative", 0.05, 3)
    assert not any(p.exists() for p in workdir.index_files(work))  # no index built, no pool searched
    searched = pl.read_parquet(work / "candidates" / "*.parquet")
    assert searched["candidate_ids"].list.len().sum() == 0
    # The paper's rule (a negative the guide scores above the positive is masked), one negative each.
    assert run_stage(mask, "--work", work, "--negatives-from", "given", "--refilter", "--margin-strategy", "absolute",
                     "--margin", 0, "--negatives-per-anchor", 1) == 0
    assert_matches_oracle(work, "absolute", 0.0, 1)


def test_refilter_of_a_pool_search_equals_a_given_run(work, tmp_path, capsys):
    fresh = tmp_path / "fresh"
    shutil.copytree(work, fresh)
    assert run_stage(mask, "--work", fresh, "--negatives-from", "given") == 0
    assert run_stage(mask, "--work", work, "--k", 20) == 0
    assert mined(work)["n_candidates"].min() == 20  # the pool was searched
    assert run_stage(mask, "--work", work, "--negatives-from", "given") == 2  # a changed rule: refused, as any
    assert "--refilter" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--negatives-from", "given", "--refilter") == 0
    columns = ["anchor_id", "negative_ids", "negative_scores", "false_negative_ids", "given_negative_flagged",
               "threshold", "n_candidates"]
    assert mined(work).select(columns).equals(mined(fresh).select(columns))
    manifest = workdir.read_record(work / workdir.MINED_MANIFEST)
    assert manifest["rules"]["negatives_from"] == "given"


def test_no_corpus_negatives_from_candidates_searched_for_given(work, capsys):
    assert run_stage(mask, "--work", work, "--negatives-from", "given", "--pool-slice-size", 10) == 2
    assert "searches no pool: drop --pool-slice-size" in capsys.readouterr().err
    assert not (work / "candidates").exists()  # refused before anything is written
    assert run_stage(mask, "--work", work, "--negatives-from", "given") == 0
    assert run_stage(mask, "--work", work, "--refilter") == 2
    assert "hold no pool candidates" in capsys.readouterr().err
    assert run_stage(mask, "--work", work) == 2  # a pool search over them needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--overwrite", "--k", 5) == 0
    assert mined(work)["n_candidates"].min() == 5
    assert "negatives_from" not in workdir.read_record(work / workdir.MINED_MANIFEST)["rules"]  # the default: as before
