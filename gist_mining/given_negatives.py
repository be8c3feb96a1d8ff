"""``pipeline.mask --negatives-from given``: GISTEmbed's own setting, where an anchor's negatives are only those its
input gives (MEDI's one ``neg`` per row) and the trainer adds the batch's texts. No pool is searched; each given
negative is judged by the guide under the positive-aware margin rule (``MiningRules``), kept, or kept out as a false
negative, and mined/ is written in its usual schema, so train.run and gist_mining.st read it unchanged.

``--negatives-from corpus`` (the default) searches the pool for more negatives besides the given ones. With
``given``, candidates/ are written without candidates (the search plan records ``pool_search: false``, part of its
fingerprint), and ``select`` ignores any candidates, so that ``--refilter --negatives-from given`` over a corpus
search re-filters in seconds; the way back (``--refilter --negatives-from corpus`` over candidates searched for
``given``) has nothing to re-filter and refuses.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gist_mining.errors import UsageError

SOURCES = ("corpus", "given")
POOL_SEARCH = "pool_search"  # the search plan's key: present (false) only when no pool was searched
CANDIDATE_COLUMNS = ("candidate_ids", "candidate_scores", "rescore_candidate_scores")


def searches_pool(search) -> bool:
    return search.pool_search


def search_record(negatives_from: str) -> dict:
    """What a search plan adds for ``negatives_from``: nothing for the pool search (fingerprints as before)."""
    return {POOL_SEARCH: False} if negatives_from == "given" else {}


def check(negatives_from: str, search, work, *, pool_slice_size, update_from) -> None:
    """Usage errors of the combination: pool options without a pool search, or re-filtering for corpus negatives
    candidates that hold none."""
    if negatives_from == "given" and (pool_slice_size is not None or update_from):
        raise UsageError("--negatives-from given searches no pool: drop --pool-slice-size and --update-from")
    if negatives_from == "corpus" and not searches_pool(search):
        raise UsageError(f"{work}: candidates/ were written for --negatives-from given and hold no pool candidates; "
                         f"search the pool with `python -m pipeline.mask --work {work} --overwrite`")


def no_candidates(query_ids: np.ndarray, _queries, _exclude) -> tuple[np.ndarray, np.ndarray]:
    """The search step's ``find`` without a pool: no candidate for any anchor."""
    return np.zeros((len(query_ids), 0), np.int64), np.zeros((len(query_ids), 0), np.float32)


def without_candidates(candidates: pa.Table) -> pa.Table:
    """A chunk of candidates/ with every anchor's candidate lists emptied: only its given negatives are left."""
    for name in CANDIDATE_COLUMNS:
        column = candidates[name]
        # A null list (no cross-encoder scores) stays null.
        empty = pa.array([None if null else [] for null in column.is_null().to_pylist()], type=column.type)
        candidates = candidates.set_column(candidates.schema.get_field_index(name), name, empty)
    return candidates
