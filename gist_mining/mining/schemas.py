"""The tables' schemas: what the search writes per anchor (candidates/, with a cross-encoder's scores beside the
guide's) and what mining writes (mined/), and which columns each kind of score is read from."""

from __future__ import annotations

import pyarrow as pa

# What the search writes: per anchor, its k candidates and given negatives with the guide's scores.
SEARCHED_SCHEMA = pa.schema([
    ("anchor_id", pa.int64()), ("query_id", pa.int64()), ("positive_id", pa.int64()), ("task", pa.string()),
    ("positive_score", pa.float32()), ("candidate_ids", pa.list_(pa.int64())),
    ("candidate_scores", pa.list_(pa.float32())), ("given_negative_ids", pa.list_(pa.int64())),
    ("given_negative_scores", pa.list_(pa.float32())),
    # The guide's lowest score of the query with any of its positives (several when the query is repeated or has
    # several qrels): the margin rule's reference, as in sentence-transformers' mine_hard_negatives.
    ("weakest_positive_score", pa.float32()),
])
# A cross-encoder's scores of the same pairs (gist_mining.rescore), in the same order; null without one.
RESCORE_SCHEMA = pa.schema([
    ("rescore_positive_score", pa.float32()), ("rescore_candidate_scores", pa.list_(pa.float32())),
    ("rescore_given_negative_scores", pa.list_(pa.float32())),
])
CANDIDATE_SCHEMA = pa.schema([*SEARCHED_SCHEMA, *RESCORE_SCHEMA])
# In each search plan and its fingerprint: candidates/ of another format (2: weakest_positive_score stored) are
# searched again, never read.
CANDIDATES_FORMAT = 2
# The columns each MiningRules.score reads: positive, candidates, given negatives.
SCORES = {"guide": ("positive_score", "candidate_scores", "given_negative_scores"),
          "rescore": tuple(RESCORE_SCHEMA.names)}
# The score each MiningRules.score puts the margin rule's threshold under: the cross-encoder scores only the
# anchor's own positive, so with it the rule stays per anchor.
THRESHOLD_SCORES = {"guide": "weakest_positive_score", "rescore": "rescore_positive_score"}


MINED_SCHEMA = pa.schema([
    ("anchor_id", pa.int64()), ("query_id", pa.int64()), ("positive_id", pa.int64()), ("task", pa.string()),
    ("positive_score", pa.float32()), ("threshold", pa.float32()), ("negative_ids", pa.list_(pa.int64())),
    ("negative_scores", pa.list_(pa.float32())), ("negative_ranks", pa.list_(pa.int32())),
    ("false_negative_ids", pa.list_(pa.int64())), ("false_negative_scores", pa.list_(pa.float32())),
    ("given_negative_flagged", pa.list_(pa.bool_())), ("given_negative_ids", pa.list_(pa.int64())),
    ("n_candidates", pa.int32()), ("candidates_above_positive", pa.int32()),
])
