"""The selection rules on hand-built scores with known answers (pure functions, no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gist_mining.lists import PAD_ID
from gist_mining.margin import false_negative_threshold, is_false_negative
from gist_mining.mining import MiningRules, judge_candidates

NO_GIVEN = np.zeros((1, 0), dtype=np.int64), np.zeros((1, 0), dtype=np.float32)


def run(scores, positive, rules, given=NO_GIVEN, ids=None, anchor=0):
    scores = np.array([scores], dtype=np.float32)
    ids = np.array([ids if ids is not None else list(range(100, 100 + scores.shape[1]))], dtype=np.int64)
    out = judge_candidates(np.array([anchor]), np.array([positive], dtype=np.float32), ids, scores, given[0], given[1], rules)
    return {k: v.to_pylist()[0] for k, v in out.items()}


@pytest.mark.parametrize(
    "strategy, margin, positive, expected",
    [
        ("absolute", 0.1, 0.8, 0.7),
        ("relative", 0.05, 0.8, 0.76),
        ("relative", 0.5, -0.2, -0.3),  # below p for a negative p; p * (1 - M) would give -0.1, above it
        ("absolute", 0.0, -0.2, -0.2),
    ],
)
def test_threshold(strategy, margin, positive, expected):
    assert false_negative_threshold(positive, strategy, margin) == pytest.approx(expected)
    assert false_negative_threshold(np.float32(positive), strategy, margin) == pytest.approx(expected)
    assert false_negative_threshold(torch.tensor(positive), strategy, margin).item() == pytest.approx(expected)


def test_none_strategy_never_flags():
    assert not is_false_negative(np.array([0.99, 5.0]), 0.1, "none", 0.0).any()
    assert not is_false_negative(torch.tensor([0.99, 5.0]), torch.tensor(0.1), "none", 0.0).any()


def test_absolute_margin_splits_false_and_hard_negatives():
    out = run([0.9, 0.75, 0.7, 0.6, 0.5], 0.8, MiningRules("absolute", 0.1, num_negatives=3))
    assert out["false_negative_ids"] == [100, 101]  # strictly above 0.7
    assert out["negative_ids"] == [102, 103, 104] and out["negative_ranks"] == [2, 3, 4]
    assert out["negative_scores"] == pytest.approx([0.7, 0.6, 0.5])
    assert out["threshold"] == pytest.approx(0.7)


def test_relative_margin_with_negative_positive_score():
    out = run([-0.1, -0.25, -0.35, -0.5], -0.2, MiningRules("relative", 0.5, num_negatives=2))
    assert out["false_negative_ids"] == [100, 101]
    assert out["negative_ids"] == [102, 103]


def test_none_keeps_everything_and_caps_still_apply():
    out = run([0.95, 0.9, 0.3, 0.1], 0.5, MiningRules("none", 0.0, max_score=0.92, min_score=0.2, num_negatives=5))
    assert out["false_negative_ids"] == [100]  # above the cap
    assert out["negative_ids"] == [101, 102]  # 0.1 is too easy


def test_rank_min_skips_the_first_survivors():
    out = run([0.9, 0.6, 0.5, 0.4, 0.3], 0.8, MiningRules("absolute", 0.1, rank_min=2, num_negatives=2))
    assert out["false_negative_ids"] == [100]
    assert out["negative_ids"] == [103, 104]


def test_padding_is_ignored():
    out = run([0.5, 0.4, -np.inf], 0.8, MiningRules(num_negatives=5), ids=[7, 8, PAD_ID])
    assert out["negative_ids"] == [7, 8] and out["false_negative_ids"] == []


def test_given_negatives_scored_flagged_and_kept_first():
    given = np.array([[200, 201]]), np.array([[0.95, 0.3]], dtype=np.float32)
    out = run([0.9, 0.6, 0.3], 0.8, MiningRules("absolute", 0.0, num_negatives=2), given=given, ids=[300, 301, 201])
    assert out["given_negative_flagged"] == [True, False]
    assert out["negative_ids"] == [201, 301]  # the kept given one first, then the best mined, no duplicate of 201
    assert out["false_negative_ids"] == [200, 300]


def test_random_sampling_is_seeded_and_independent_of_chunking():
    rng = np.random.default_rng(0)
    scores = np.sort(rng.uniform(-0.2, 0.7, size=(6, 40)).astype(np.float32), axis=1)[:, ::-1]
    ids = rng.integers(0, 10**12, size=(6, 40))
    anchors, positives = np.arange(6) * 7, np.full(6, 0.8, dtype=np.float32)
    empty = np.zeros((6, 0), dtype=np.int64), np.zeros((6, 0), dtype=np.float32)
    rules = MiningRules(num_negatives=5, sampling="random", seed=3)
    whole = judge_candidates(anchors, positives, ids, scores, *empty, rules)["negative_ids"].to_pylist()
    again = judge_candidates(anchors, positives, ids, scores, *empty, rules)["negative_ids"].to_pylist()
    reversed_ = judge_candidates(anchors[::-1], positives, ids[::-1], scores[::-1], *empty, rules)["negative_ids"].to_pylist()
    other = judge_candidates(anchors, positives, ids, scores, *empty, MiningRules(num_negatives=5, sampling="random", seed=4))
    assert whole == again == reversed_[::-1]
    assert whole != other["negative_ids"].to_pylist()
    top = judge_candidates(anchors, positives, ids, scores, *empty, MiningRules(num_negatives=5))["negative_ids"].to_pylist()
    assert whole != top
    for row, chosen in enumerate(whole):
        assert len(chosen) == 5 and set(chosen) <= set(ids[row])
        order = [list(ids[row]).index(c) for c in chosen]
        assert order == sorted(order)  # kept in score order


def test_anchors_the_guide_cannot_judge_are_counted_per_task():
    """Candidates above the positive come from the stored scores; an anchor is unjudged when most are."""
    import polars as pl
    import pyarrow as pa

    from gist_mining.mining import CANDIDATE_SCHEMA, SCORES, select
    from gist_mining.summary import summarize

    scores = [[0.9, 0.8, 0.7, 0.1], [0.9, 0.2, 0.1], [0.5, 0.4]]
    candidates = pa.Table.from_pydict({
        "anchor_id": [0, 1, 2], "query_id": [10, 11, 12], "positive_id": [20, 21, 22], "task": ["a", "a", "b"],
        "positive_score": [0.75, 0.5, 0.45], "weakest_positive_score": [0.75, 0.5, 0.45], "candidate_ids": [[30 + i for i in range(len(s))] for s in scores],
        "candidate_scores": scores, "given_negative_ids": [[], [], []], "given_negative_scores": [[], [], []],
        **{name: [None] * 3 for name in SCORES["rescore"]},
    }, schema=CANDIDATE_SCHEMA)
    mined = select(candidates, MiningRules())
    assert mined["candidates_above_positive"].to_pylist() == [2, 1, 1]
    summary = summarize(pl.from_arrow(mined).lazy(), 3)
    # 2 of 4 is not most; 1 of 3 is not; 1 of 2 is not: none. Lower anchor 0's positive: 3 of 4 are above it
    assert summary["anchors_the_guide_cannot_judge"] == 0
    lower = candidates.set_column(4, "positive_score", pa.array([0.6, 0.5, 0.3], type=pa.float32()))
    summary = summarize(pl.from_arrow(select(lower, MiningRules())).lazy(), 3)
    assert summary["anchors_the_guide_cannot_judge"] == 2
    assert {t: v["anchors_the_guide_cannot_judge"] for t, v in summary["per_task"].items()} == {"a": 1, "b": 1}


def test_unjudged_anchors_take_negatives_by_rank_without_the_margin():
    # positive 0.3: 3 of 4 candidates above it, so the guide cannot judge this anchor
    scores, positive = [0.9, 0.8, 0.5, 0.1], 0.3
    margin = run(scores, positive, MiningRules(num_negatives=2))
    assert margin["negative_ids"] == [103] and margin["false_negative_ids"] == [100, 101, 102]
    ranked = run(scores, positive, MiningRules(num_negatives=2, unjudged_rank_min=1))
    assert ranked["negative_ids"] == [101, 102] and ranked["false_negative_ids"] == []
    # an anchor the guide can judge keeps the margin rule
    judged = run(scores, 0.85, MiningRules(num_negatives=2, unjudged_rank_min=1))
    assert judged["false_negative_ids"] == [100] and judged["negative_ids"] == [101, 102]
