"""Positive-aware hard-negative selection over stored scores, vectorised over a chunk of anchors.

Per anchor: the k nearest document-side texts by the guide (its own query text and every positive of
that query excluded), each with its exact guide score, and optionally a cross-encoder's score of each
(query, text) pair (``gist_mining.rescore``). ``select`` turns them into hard negatives and false negatives
under ``MiningRules``, from the guide's scores or the cross-encoder's (``MiningRules.score``); it reads only
the candidates, so new rules never need a new search (the margin rule itself is gist_mining.margin's, shared with the
trainer's in-batch filter); the FAISS indexes the search runs on are built and sized here too.

The package's modules, each one concern: ``schemas`` (the tables), ``rules`` (``MiningRules``), ``index`` (FAISS
indexes and their memory plan), ``search`` (candidates from an index), ``select`` (hard and false negatives).
The rules, schemas and selection need no FAISS and are this package's names (``gist_mining.mining.NAME``), so
that the trainer and every reader of mined/ import no FAISS; the index and search ones are their modules'
(``gist_mining.mining.index.NAME``, ``gist_mining.mining.search.NAME``).
"""

from __future__ import annotations

from gist_mining.mining.rules import MiningRules
from gist_mining.mining.schemas import (CANDIDATES_FORMAT, CANDIDATE_SCHEMA, MINED_SCHEMA, RESCORE_SCHEMA, SCORES,
                                        SEARCHED_SCHEMA, THRESHOLD_SCORES)
from gist_mining.mining.select import judge_candidates, random_keys, select
