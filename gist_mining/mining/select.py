"""Selection: an anchor's candidates (and given negatives) judged under ``MiningRules`` into hard negatives, false
negatives and flags on the given negatives, vectorised over a chunk of anchors (``select``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gist_mining import given_negatives
from gist_mining.lists import PAD_ID, padded, ragged
from gist_mining.margin import false_negative_threshold, is_unjudged
from gist_mining.mining.rules import MiningRules
from gist_mining.mining.schemas import MINED_SCHEMA, SCORES, THRESHOLD_SCORES


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a fixed, well-spread hash of uint64 values."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def random_keys(seed: int, anchor_ids: np.ndarray, candidate_ids: np.ndarray) -> np.ndarray:
    """A pseudo-random key per (seed, anchor, candidate): the same draw in any chunking, sharding or order."""
    with np.errstate(over="ignore"):
        x = _mix64(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15))
        x = _mix64(x ^ anchor_ids.astype(np.uint64)[:, None])
        return _mix64(x ^ candidate_ids.astype(np.uint64))


def select(candidates: pa.Table, rules: MiningRules) -> pa.Table:
    """A chunk of ``candidates/`` (CANDIDATE_SCHEMA) to its rows of ``mined/`` (MINED_SCHEMA) under ``rules``.

    The candidates are ranked by the score the rules read (the guide's order already; a cross-encoder's
    re-ranks them, ties kept in the guide's order), and ``positive_score`` and every score written are that score.
    """
    positive, candidate, given = SCORES[rules.score]
    if rules.negatives_from == "given":
        candidates = given_negatives.without_candidates(candidates)
    if candidates[positive].null_count:
        raise ValueError(f"the candidates hold no {positive} (searched without --rescore-model)")
    if candidates[THRESHOLD_SCORES[rules.score]].null_count:
        raise ValueError(f"the candidates hold no {THRESHOLD_SCORES[rules.score]} (searched before it was stored)")
    ids = padded(candidates["candidate_ids"], PAD_ID, np.int64)
    scores = padded(candidates[candidate], -np.inf, np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")
    ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
    positive_scores = candidates[positive].to_numpy()
    chosen = judge_candidates(
        anchor_ids=candidates["anchor_id"].to_numpy(), positive_scores=positive_scores, candidate_ids=ids,
        candidate_scores=scores, given_ids=padded(candidates["given_negative_ids"], PAD_ID, np.int64),
        given_scores=padded(candidates[given], -np.inf, np.float32), rules=rules,
        reference_scores=candidates[THRESHOLD_SCORES[rules.score]].to_numpy(),
    )
    kept = ("anchor_id", "query_id", "positive_id", "task", "given_negative_ids")
    return pa.Table.from_pydict(
        {**{name: candidates[name] for name in kept}, "positive_score": candidates[positive], **chosen,
         "n_candidates": pc.list_value_length(candidates["candidate_ids"]).cast(pa.int32()),
         "candidates_above_positive": pa.array((scores > positive_scores[:, None]).sum(axis=1), type=pa.int32())},
        schema=MINED_SCHEMA)


def _per_anchor_rule(positive_scores: np.ndarray, reference_scores: np.ndarray, candidate_scores: np.ndarray,
                     valid: np.ndarray, rules: MiningRules) -> tuple[np.ndarray, np.ndarray]:
    """Each anchor's false-negative threshold (under ``reference_scores``) and how many surviving candidates it
    skips."""
    threshold = false_negative_threshold(reference_scores, rules.margin_strategy, rules.margin).astype(np.float32)
    rank_min = np.full(len(positive_scores), rules.rank_min)
    if rules.unjudged_rank_min is not None:
        above = (valid & (candidate_scores > positive_scores[:, None])).sum(axis=1)
        unjudged = is_unjudged(above, valid.sum(axis=1))
        threshold[unjudged] = np.inf
        rank_min[unjudged] = rules.unjudged_rank_min
    return threshold, rank_min[:, None]


def judge_candidates(anchor_ids: np.ndarray, positive_scores: np.ndarray, candidate_ids: np.ndarray,
           candidate_scores: np.ndarray, given_ids: np.ndarray, given_scores: np.ndarray,
           rules: MiningRules, reference_scores: np.ndarray | None = None) -> dict[str, pa.Array]:
    """Hard negatives, false negatives and given-negative flags for a chunk of anchors.

    A candidate is a false negative when the guide puts it above the anchor's threshold (the shared
    margin rule, under ``reference_scores``: the query's weakest positive; default ``positive_scores``) or above
    ``max_score``. Survivors not below ``min_score`` are ranked by score; the first
    ``rank_min`` are skipped, and from the rest ``num_negatives`` are taken (top, or seeded random),
    counting the given negatives that the guide does not flag, which always come first (at most
    ``num_negatives`` of them, in input order). ``unjudged_rank_min`` changes both for anchors the guide
    cannot judge.
    """
    valid = candidate_ids != PAD_ID
    reference_scores = positive_scores if reference_scores is None else reference_scores
    threshold, rank_min = _per_anchor_rule(positive_scores, reference_scores, candidate_scores, valid, rules)

    def flagged(scores):
        over = scores > threshold[:, None]
        return over | (scores > rules.max_score) if rules.max_score is not None else over

    given_valid = given_ids != PAD_ID
    false_neg = valid & flagged(candidate_scores)
    given_flagged = given_valid & flagged(given_scores)
    unflagged = given_valid & ~given_flagged
    given_kept = unflagged & (np.cumsum(unflagged, axis=1) <= rules.num_negatives)  # the first N, input order

    is_given = (candidate_ids[:, :, None] == np.where(given_valid, given_ids, PAD_ID - 1)[:, None, :]).any(axis=2)
    survivors = valid & ~false_neg & ~is_given
    if rules.min_score is not None:
        survivors &= candidate_scores >= rules.min_score
    eligible = survivors & (np.cumsum(survivors, axis=1) > rank_min)
    wanted = np.maximum(rules.num_negatives - given_kept.sum(axis=1), 0)[:, None]
    if rules.sampling == "top":
        chosen = eligible & (np.cumsum(eligible, axis=1) <= wanted)
    else:
        keys = np.where(eligible, random_keys(rules.seed, anchor_ids, candidate_ids), np.iinfo(np.uint64).max)
        draw_rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1)
        chosen = eligible & (draw_rank < wanted)

    negatives = np.concatenate([given_ids, candidate_ids], axis=1)
    negative_scores = np.concatenate([given_scores, candidate_scores], axis=1)
    negative_ranks = np.concatenate([np.full(given_ids.shape, -1), np.broadcast_to(np.arange(candidate_ids.shape[1]),
                                                                                   candidate_ids.shape)], axis=1)
    take = np.concatenate([given_kept, chosen], axis=1)
    # A flagged given negative is a false negative too, unless the search already found it.
    given_only = given_flagged & ~(given_ids[:, :, None] == candidate_ids[:, None, :]).any(axis=2)
    fn_take = np.concatenate([given_only, false_neg], axis=1)
    float_list = pa.float32()
    return {
        "threshold": pa.array(threshold, type=pa.float32()),
        "negative_ids": ragged(negatives, take, pa.int64()),
        "negative_scores": ragged(negative_scores, take, float_list),
        "negative_ranks": ragged(negative_ranks, take, pa.int32()),
        "false_negative_ids": ragged(negatives, fn_take, pa.int64()),
        "false_negative_scores": ragged(negative_scores, fn_take, float_list),
        "given_negative_flagged": ragged(given_flagged, given_valid, pa.bool_()),
    }
