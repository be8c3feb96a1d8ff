"""Positive-aware hard-negative selection over stored scores, vectorised over a chunk of anchors.

Per anchor: the k nearest document-side texts by the guide (its own query text and every positive of
that query excluded), each with its exact guide score, and optionally a cross-encoder's score of each
(query, text) pair (``gist_mining.rescore``). ``select`` turns them into hard negatives and false negatives
under ``MiningRules``, from the guide's scores or the cross-encoder's (``MiningRules.score``); it reads only
the candidates, so new rules never need a new search (the margin rule itself is gist_mining.margin's, shared with the
trainer's in-batch filter); the FAISS indexes the search runs on are built and sized here too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gist_mining import given_negatives
from gist_mining.errors import UsageError
from gist_mining.lists import PAD_ID, padded, ragged
from gist_mining.margin import STRATEGIES, false_negative_threshold, is_unjudged
from gist_mining.settings import option
from gist_mining.storage import commit, tmp_name

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


@dataclass(frozen=True)
class MiningRules:
    """Which of an anchor's candidates are false negatives, and which become its hard negatives (``select``)."""

    margin_strategy: str = option("relative", "the mining margin rule: a candidate is a false negative above the "
                                              "positive's score less margin x |score| (relative), less margin "
                                              "(absolute), or never (none)", choices=STRATEGIES)
    margin: float = option(0.05, "the mining margin rule's margin")
    min_score: float | None = option(None, "drop candidates below this (too easy)", type=float)
    max_score: float | None = option(None, "flag candidates above this as false negatives", type=float)
    rank_min: int = option(0, "skip this many top surviving candidates")
    # Stored as num_negatives in mined manifests; one option name with the trainer's (its part of them).
    num_negatives: int = option(3, "hard negatives mined per anchor (given negatives the guide keeps count first)",
                                flag="--negatives-per-anchor")
    sampling: str = option("top", "which survivors become negatives: the highest scored, or a seeded random draw",
                           choices=("top", "random"))
    seed: int = option(42, "seed of every random draw of the stage (here: --sampling random)")
    # For anchors the guide cannot judge (is_unjudged): None keeps the margin rule, which flags nearly all of
    # their candidates; R turns it off for them and takes their negatives after their first R candidates.
    unjudged_rank_min: int | None = option(None, "anchors the guide cannot judge (positive below most candidates): "
                                                 "no margin rule, skip this many top candidates instead "
                                                 "(default: the margin rule for all)", type=int)
    # Whose scores the rules read: the guide's, or the cross-encoder's (which also re-ranks the candidates).
    score: str = option("guide", "scores the rules read: the guide's, or --rescore-model's (which re-ranks the "
                                 "candidates)", choices=SCORES)
    # given: GISTEmbed's own setting, no pool search (gist_mining.given_negatives).
    negatives_from: str = option("corpus", "where hard negatives come from: the given negatives and the pool's nearest "
                                           "texts (corpus), or the given negatives alone, each judged by the guide, "
                                           "no search (given: as the GIST models were trained)",
                                 choices=given_negatives.SOURCES)

    def __post_init__(self):
        if self.margin_strategy not in STRATEGIES:
            raise ValueError(f"margin strategy must be one of {', '.join(STRATEGIES)}")
        if self.sampling not in ("top", "random"):
            raise ValueError("sampling must be 'top' or 'random'")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}")
        if self.negatives_from not in given_negatives.SOURCES:
            raise ValueError(f"negatives_from must be one of {', '.join(given_negatives.SOURCES)}")
        if self.rank_min < 0 or self.num_negatives < 0 or (self.unjudged_rank_min or 0) < 0:
            raise ValueError("rank_min, unjudged_rank_min and num_negatives must be >= 0")

    def as_dict(self) -> dict:
        rules = asdict(self)
        if self.negatives_from == "corpus":  # the default leaves out: mined/ made before it existed stays current
            del rules["negatives_from"]
        return rules


# -- FAISS indexes ------------------------------------------------------------------------------------
# FAISS indexes over L2-normalised guide embeddings (inner product = cosine), chosen by pool size and memory.
#
# ``auto`` is exact (IndexFlatIP) up to AUTO_EXACT_MAX vectors and HNSW above, as long as the index takes at
# most half the memory budget; past that, HNSW over 8-bit scalar-quantised vectors, then IVF-PQ (bytes per
# vector in ``bytes_per_vector``). The other half of the budget holds the stage's id arrays and a chunk's
# working set. Measured by benchmarks/index_recall.py (WordNet glosses, 384-d, 2000 queries, k = 100, 2 CPU
# cores, 2026-11-25): at 100k vectors exact search runs 3467 queries/s and HNSW 3361 with recall@100 0.952
# (IVF, nprobe 32: 0.784), so below a few hundred thousand vectors approximation buys no speed and loses 5% of
# the true neighbours. At 300k exact search answers about a third of that (it reads the whole pool per query),
# while mpnet embeds ~130 texts/s on the same cores: the search is a small share of the mining cost. Above
# that, exact search grows as anchors x pool and HNSW takes over. Whatever the index, the mask stage scores
# every candidate from the stored vectors; quantised indexes are asked for RESCORE_DEPTH x k candidates, which
# are rescored exactly and cut to k.

KINDS = ("flat", "ivf", "hnsw", "hnswsq", "ivfpq", "auto")
AUTO_EXACT_MAX = 300_000
HNSW_M = 32
PQ_DIMS_PER_BYTE = 8  # IVF-PQ: one 8-bit code per 8 dimensions (48 bytes for a 384-d vector)
RESCORE_DEPTH = 3  # quantised scores rank roughly: ask for 3k, rescore exactly, keep the best k
# Training points: k-means over 256 per list for IVF; fewer for IVF-PQ, whose lists only route the search
# (64 per list keeps its k-means to minutes at 10M vectors on 2 cores); SQ8 learns each dimension's range.
# The PQ codebooks (256 codes per sub-vector) want >= 39 x 256 points.
TRAIN_SAMPLE = {"ivf": lambda index: 256 * index.nlist, "ivfpq": lambda index: max(64 * index.nlist, 39 * 256),
                "hnswsq": lambda index: 1 << 18}
# IVF-PQ routes vectors to its lists through HNSW over the list centroids, not a flat scan: at 3162 lists
# (10M vectors) assigning a vector costs a third, and 99% land in the same list.
ADD_BATCH = 65_536  # vectors read from the store and added at a time
# What the stage holds besides the index, per pool vector: pool ids, and the store's ids, order and sorted ids.
STAGE_BYTES_PER_VECTOR = 4 * 8


def bytes_per_vector(kind: str, dim: int) -> int:
    """The index's memory per vector, as FAISS lays it out (checked against serialised sizes by the tests)."""
    links = HNSW_M * 2 * 4 + 16  # level-0 neighbours (2M int32); upper levels, level and offset, on average
    return {"flat": 4 * dim, "ivf": 4 * dim + 8, "hnsw": 4 * dim + links, "hnswsq": dim + links,
            "ivfpq": max(1, dim // PQ_DIMS_PER_BYTE) + 8}[kind]


def parse_bytes(text: str) -> int:
    """'8G', '512M', '2.5GiB' or a number of bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in units else ""
    try:
        return int(float(value.removesuffix(unit)) * units[unit])
    except ValueError:
        raise UsageError(f"--memory-budget must be a size like 8G or 512M, not {text!r}") from None


def resolve_kind(kind: str, n_vectors: int, dim: int, budget: int) -> str:
    """``auto``: the most exact index whose memory fits half of ``budget`` bytes (see the module note)."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    order = ("flat", "hnsw", "hnswsq", "ivfpq") if n_vectors <= AUTO_EXACT_MAX else ("hnsw", "hnswsq", "ivfpq")
    for choice in order:
        if (bytes_per_vector(choice, dim) + STAGE_BYTES_PER_VECTOR) * n_vectors <= budget // 2:
            return choice
    need = 2 * (bytes_per_vector("ivfpq", dim) + STAGE_BYTES_PER_VECTOR) * n_vectors
    raise UsageError(f"a pool of {n_vectors} vectors needs --memory-budget of at least {need / 2**30:.1f}G "
                     "(IVF-PQ, the smallest index)")


def _nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list


def empty_index(kind: str, n: int, dim: int) -> faiss.Index:
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, _nlist(n), faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnswsq":
        return faiss.index_factory(dim, f"HNSW{HNSW_M},SQ8", faiss.METRIC_INNER_PRODUCT)
    if kind == "ivfpq":
        nbits = 8 if n >= 39 * 256 else 4  # a codebook of 2^nbits centroids, trained on >= 39 points each
        nlist = max(1, min(int(math.sqrt(n)), n // 39))
        index = faiss.index_factory(dim, f"IVF{nlist}_HNSW{HNSW_M},PQ{max(1, dim // PQ_DIMS_PER_BYTE)}x{nbits}",
                                    faiss.METRIC_INNER_PRODUCT)
        index.do_polysemous_training = False  # Hamming filtering is never used; its training costs minutes
        return index
    raise ValueError(f"unknown index kind {kind!r}")


def search_depth(index: faiss.Index) -> int:
    """How many times k candidates to ask of ``index``: more where its scores are quantised."""
    return RESCORE_DEPTH if isinstance(index, (faiss.IndexHNSWSQ, faiss.IndexIVFPQ)) else 1


def set_search_parameters(index: faiss.Index, k: int) -> faiss.Index:
    if hasattr(index, "hnsw"):  # the search asks for depth x k results, so the beam is at least twice that
        index.hnsw.efSearch = max(128, 2 * k * search_depth(index))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = min(ivf.nlist, 32)
        quantizer = faiss.downcast_index(ivf.quantizer)
        if hasattr(quantizer, "hnsw"):  # the lists to probe come from an HNSW search: a beam of 2 x nprobe
            quantizer.hnsw.efSearch = 2 * ivf.nprobe
    return index


def train_lists(ivf: faiss.IndexIVF, x: np.ndarray) -> None:
    """IVF-PQ's lists: k-means with faiss's IVF settings, then the centroids into its HNSW quantizer on one
    thread, as a graph built on several depends on their timing (3162 centroids: ~1 s)."""
    clustering = faiss.Clustering(ivf.d, ivf.nlist, ivf.cp)
    clustering.train(x, faiss.IndexFlat(ivf.d, ivf.metric_type))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        ivf.quantizer.add(faiss.vector_to_array(clustering.centroids).reshape(ivf.nlist, ivf.d))
    finally:
        faiss.omp_set_num_threads(threads)


def build_index(vectors, kind: str, k: int, seed: int = 0) -> faiss.Index:
    """``vectors``: an (n, d) array, or anything indexed like one (rows read on demand; ``shape``)."""
    n, dim = vectors.shape
    index = empty_index(kind, n, dim)
    if not index.is_trained:
        sample = np.sort(np.random.default_rng(seed).choice(n, size=min(n, TRAIN_SAMPLE[kind](index)), replace=False))
        x = np.ascontiguousarray(vectors[sample], dtype=np.float32)
        if kind == "ivfpq":
            train_lists(faiss.extract_index_ivf(index), x)  # then index.train only trains the PQ codebooks
        index.train(x)
    add_vectors(index, vectors)
    return set_search_parameters(index, k)


def add_vectors(index: faiss.Index, vectors) -> None:
    """``vectors`` (an array, or rows read on demand) into a trained index, ADD_BATCH at a time."""
    for start in range(0, len(vectors), ADD_BATCH):
        index.add(np.ascontiguousarray(vectors[start: start + ADD_BATCH], dtype=np.float32))


def save_index(index: faiss.Index, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    faiss.write_index(index, str(tmp))
    commit(tmp, path)


def load_index(path: Path, k: int) -> faiss.Index:
    """Memory-mapped, not copied: shard processes on one machine share the file's pages (the page cache)
    instead of each holding the index. IO_FLAG_MMAP_IFC maps the codes, graphs and inverted lists of every
    kind in KINDS (faiss 1.15; IO_FLAG_MMAP maps only IVF lists). The file is replaced by rename, never
    rewritten in place, so a mapping stays valid."""
    return set_search_parameters(faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC), k)


# -- candidates --------------------------------------------------------------------------------------


def search_candidates(index, query_vectors: np.ndarray, exclude: np.ndarray, pool_ids: np.ndarray,
                      pool_vectors, k: int, depth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Top-k pool texts per query, none of its ``exclude`` ids (n, e; PAD_ID-padded), scored exactly.

    An exact index's distances are the inner products of the stored vectors already; for an approximate
    one, pass ``pool_vectors`` (an array, or rows read on demand: ``workdir.StoredRows``) and the scores of
    the ``depth`` x k nearest by the index are recomputed from them before the best k are kept.
    Returns ids (n, k) padded with PAD_ID and scores (n, k) padded with -inf, sorted by score descending.
    """
    search_k = min(depth * k + exclude.shape[1], len(pool_ids))
    distances, rows = index.search(np.ascontiguousarray(query_vectors, dtype=np.float32), search_k)
    ids = np.where(rows >= 0, pool_ids[np.maximum(rows, 0)], PAD_ID)
    keep = (rows >= 0) & ~(ids[:, :, None] == exclude[:, None, :]).any(axis=2)
    first = np.argsort(~keep, axis=1, kind="stable")[:, :depth * k]  # kept entries first, in search order
    rows, keep, ids = (np.take_along_axis(m, first, axis=1) for m in (rows, keep, ids))
    if pool_vectors is None:
        scores = np.take_along_axis(distances, first, axis=1)
    else:
        scores = np.einsum("nd,nkd->nk", query_vectors, pool_vectors[np.maximum(rows, 0)], dtype=np.float32)
    scores = np.where(keep, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(ids, order, axis=1), PAD_ID), \
        np.take_along_axis(scores, order, axis=1)


@dataclass(frozen=True)
class PoolSearch:
    """``search_candidates`` over one index of pool texts: ``pool_vectors`` is None when its scores are exact."""

    index: faiss.Index
    pool_ids: np.ndarray
    pool_vectors: object
    k: int

    def __call__(self, query_vectors: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return search_candidates(self.index, query_vectors, exclude, self.pool_ids, self.pool_vectors, self.k,
                                 search_depth(self.index))


def merge_candidates(lists: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best k of several candidate lists per row, as ``search_candidates`` returns them: (ids, scores) pairs
    of n rows each, padded with PAD_ID and -inf, no id in two lists. Ties keep the order of ``lists``."""
    ids = np.concatenate([i for i, _ in lists], axis=1)
    scores = np.concatenate([s for _, s in lists], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


# -- selection ---------------------------------------------------------------------------------------


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
