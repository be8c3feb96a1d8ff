"""Several positives per query (a query repeated with other positives): against a brute-force oracle over the guide's
stored vectors, no positive of a query is a candidate or negative for it, the margin rule's threshold is under the
query's weakest positive, and the trainer masks every positive of an anchor's query but its own."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
from conftest import gist_loss, make_pairs, run_stage

from gist_mining import workdir
from gist_mining.margin import false_negative_threshold
from gist_mining.training.data import COLUMNS, TrainingData
from pipeline import embed, mask

MARGIN, NEGATIVES = 0.05, 2


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("positives")
    pairs = make_pairs(40, seed=5)
    # Queries 0-4 asked again with two more positives each; one gives another positive of its query as a negative.
    extra = pl.DataFrame([{"query": pairs["query"][i], "positive": f"{pairs['positive'][i]} again {k}",
                           "negative": [pairs["positive"][i]] if (i, k) == (0, 0) else [], "task": "a"}
                          for k in range(2) for i in range(5)])
    pl.concat([pairs, extra]).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    assert run_stage(mask, "--work", root / "w", "--k", 500, "--index", "flat", "--margin-strategy", "relative",
                     "--margin", MARGIN, "--negatives-per-anchor", NEGATIVES) == 0
    return root / "w"


def oracle(work):
    """Per query: its positives, and every pool text's guide score, by brute force."""
    ids, vectors = workdir.load_embeddings(work)
    vector_of = dict(zip(ids.tolist(), vectors))
    texts = pl.read_parquet(work / workdir.TEXTS)
    pool = texts.filter("is_document")["text_id"].to_numpy()
    anchors = pl.read_parquet(work / workdir.ANCHORS)
    positives = {q: set(p) for q, p in anchors.group_by("query_id").agg("positive_id").iter_rows()}
    scores = {q: {int(d): float(np.dot(vector_of[q], vector_of[int(d)])) for d in pool} for q in positives}
    return positives, scores


def test_mining_with_several_positives_matches_brute_force(work):
    positives, scores = oracle(work)
    mined = pl.read_parquet(workdir.verified(work, workdir.checked_mined_manifest(work), "mine")).sort("anchor_id")
    assert max(len(p) for p in positives.values()) == 3
    for row in mined.iter_rows(named=True):
        q, own = row["query_id"], row["positive_id"]
        weakest = min(scores[q][p] for p in positives[q])
        threshold = false_negative_threshold(weakest, "relative", MARGIN)
        assert row["threshold"] == pytest.approx(threshold, abs=1e-5)
        pool = {d: s for d, s in scores[q].items() if d != q and d not in positives[q]}
        expected_false = {d for d, s in pool.items() if s > threshold}
        assert set(row["false_negative_ids"]) == expected_false
        given = row["given_negative_ids"]
        ranked = sorted((d for d in pool if d not in expected_false and d not in given), key=lambda d: -pool[d])
        unflagged_given = [n for n in given if pool[n] <= threshold][:NEGATIVES]
        mined_negatives = row["negative_ids"]
        assert mined_negatives[:len(unflagged_given)] == unflagged_given
        # The rest: the best eligible texts (tied scores may come in either order).
        wanted = ranked[:NEGATIVES - len(unflagged_given)]
        assert set(mined_negatives[len(unflagged_given):]) <= set(ranked)
        assert sorted(pool[d] for d in mined_negatives[len(unflagged_given):]) == pytest.approx(sorted(pool[d] for d in wanted))
        assert not (set(row["negative_ids"]) | set(row["false_negative_ids"])) & (positives[q] | {q})
        assert own in positives[q]


def test_the_trainer_masks_every_other_positive_of_the_query(work):
    positives, _ = oracle(work)
    data = TrainingData(work, NEGATIVES, "cpu")
    anchors = pl.read_parquet(work / workdir.ANCHORS).sort("anchor_id")
    repeated = anchors.filter(pl.col("query_id").is_in(pl.Series([q for q, p in positives.items() if len(p) > 1]).implode()))
    rows = repeated["anchor_id"].to_list()[:6] + [20, 21]
    batch = data.get_batch(rows)
    generator = torch.Generator().manual_seed(0)
    student = {c: torch.randn(len(batch.texts[c]), 8, generator=generator) for c in COLUMNS}
    _, masked, labels, _ = gist_loss().masked_logits(batch.with_student(student))
    candidate_ids = torch.cat([batch.ids["positives"], batch.ids["negatives"], batch.ids["queries"],
                               batch.ids["positives"]]).tolist()
    checked = 0
    for i, q in enumerate(batch.ids["queries"].tolist()):
        for c, candidate in enumerate(candidate_ids):
            if candidate in positives[q] and c != labels[i]:
                assert masked[i, c], (i, c)
                checked += 1
        assert not masked[i, labels[i]]
    assert checked > len(rows)  # the repeated queries' other positives were in the batch
