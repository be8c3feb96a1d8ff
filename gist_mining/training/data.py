"""The training data: the mined rows, their texts and the guide's stored vectors, and ``get_batch``, one step's
anchors with everything the loss needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from gist_mining import workdir
from gist_mining.distill import SoftLabels
from gist_mining.lists import PAD_ID, Ragged, padded
from gist_mining.loss import Column, GuidedBatch
from gist_mining.margin import is_unjudged
from gist_mining.settings import parse_bytes
from gist_mining.training.batches import RowTexts

COLUMNS = ("queries", "positives", "negatives")
CORPUS = "corpus"  # a batch's optional fourth column: unlabelled texts for distillation (training.teacher_data)
COLUMN_ROLES = {"queries": "query", "positives": "document", "negatives": "document", CORPUS: "document"}  # the guide's


@dataclass
class Batch:
    """One step's anchors: texts, stored guide vectors and ids per column, and the known false negatives; for
    distillation, maybe corpus texts (a column) and a cross-encoder's margins."""

    texts: dict[str, list[str]]
    guide: dict[str, torch.Tensor]
    ids: dict[str, torch.Tensor]
    known: torch.Tensor
    unjudged: torch.Tensor | None
    soft_labels: SoftLabels | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the student embeds: COLUMNS, and the corpus texts where the batch has them."""
        return COLUMNS + ((CORPUS,) if CORPUS in self.ids else ())

    def with_student(self, student: dict[str, torch.Tensor]) -> GuidedBatch:
        corpus = Column(student[CORPUS], self.guide[CORPUS], self.ids[CORPUS]) if CORPUS in self.ids else None
        return GuidedBatch(*(Column(student[c], self.guide[c], self.ids[c]) for c in COLUMNS), self.known,
                           self.unjudged, corpus, self.soft_labels)


ALL = "all"  # --guide-cache: every vector the rows use on the device, whatever their size


def guide_cache_bytes(text: str) -> int | None:
    """--guide-cache as bytes (None: ``all``)."""
    return None if text.strip().lower() == ALL else parse_bytes(text, "--guide-cache")


class TrainingData:
    """The mined rows, and per batch their texts and the guide vectors of each text in the role it has (queries
    in the query role, positives and negatives in the document role), as float16 on the training device (the
    loss computes their scores in float32). What is held in memory is the rows' id lists (numpy arrays, and the
    batch planner's int32 positions), whatever the pool's size: a batch's texts and vectors are read from the
    memory-mapped text table and the vector store (``workdir.TextTable``), so nothing per text is held.
    ``guide_cache``: bytes of float16 vectors the device may hold (None: no bound): when every vector the rows
    use fits, they are moved there once and a step's guide blocks are an index lookup there; else each batch's
    are read. ``false_negatives``: each row's first that many known false negatives join its negatives column,
    where the loss's rules can count them as the anchor's extra positives (LossRules.false_negatives)."""

    def __init__(self, work: Path, negatives: int, device, false_negatives: int = 0, guide_cache: int | None = 0):
        self.manifest = workdir.checked_mined_manifest(work)  # checks the chain embeddings -> candidates -> mined
        judged = self.manifest.rules.unjudged_rank_min is not None
        columns = ["anchor_id", "query_id", "positive_id", "task", "negative_ids", "false_negative_ids",
                   *(["candidates_above_positive", "n_candidates"] if judged else [])]
        rows = pl.read_parquet(workdir.verified(work, self.manifest, "mine"), columns=columns)
        if not rows["anchor_id"].is_sorted():  # the shards are in anchor order: no copy of every row
            rows = rows.sort("anchor_id")
        self.anchor_ids = rows["anchor_id"].to_numpy()
        # One str object per task, shared by its rows: 8 bytes a row, where a str per row took ~60.
        names = rows["task"].unique().sort().to_list()
        self.tasks = list(map(names.__getitem__, rows["task"].cast(pl.Enum(names)).to_physical().to_numpy()))
        self.ids = {"queries": rows["query_id"].to_numpy(), "positives": rows["positive_id"].to_numpy()}
        documents = pl.concat_list(pl.col("negative_ids").list.head(negatives),
                                   pl.col("false_negative_ids").list.head(false_negatives))
        self.negatives = Ragged(rows.select(documents).to_series())
        # Known false negatives: mining's, and every positive of the anchor's query (a query repeated with other
        # positives, or with several qrels): another anchor's positive or negative in the batch may be one. Masked,
        # not taken as extra positives, so that the loss stays GISTEmbed's one-positive cross-entropy.
        # Only a repeated query has others: grouping those alone keeps the group table small.
        repeated = rows.select("query_id", "positive_id").filter(pl.col("query_id").is_duplicated())
        positives = repeated.group_by("query_id").agg(pl.col("positive_id").unique().alias("query_positives"))
        others = (pl.col("query_positives").list.set_difference(pl.concat_list("positive_id"))  # not the row's own
                  .fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
        self.false_negatives = (rows.select("query_id", "positive_id", "false_negative_ids")
                                .join(positives, on="query_id", how="left", maintain_order="left")
                                .select(pl.concat_list("false_negative_ids", others)).to_series().to_arrow())
        # Mining took the anchors the guide cannot judge out of its margin rule: so does the in-batch rule.
        self.unjudged = (is_unjudged(rows["candidates_above_positive"], rows["n_candidates"]).to_numpy()
                         if judged else None)
        self.table = workdir.TextTable(work)
        self.guide_dimension = self.table.documents.dimension
        self.device = device
        # Each row's texts, for the batch planner; built once, as every epoch plans from them.
        lists = rows.select(pl.concat_list("query_id", "positive_id", documents)).to_series()
        del rows
        self.row_texts = RowTexts(lists, np.unique(np.concatenate([self.ids["queries"], self.ids["positives"],
                                                                    self.negatives.values])))
        self.guide_ids, self.guide = self._cached(guide_cache)

    def _cached(self, budget: int | None) -> tuple[dict, dict]:
        """The guide vectors the rows use on the device, by role, when they fit ``budget``; else none."""
        if budget == 0:
            return {}, {}
        ids = {"query": np.unique(self.ids["queries"]),
               "document": np.unique(np.concatenate([self.ids["positives"], self.negatives.values]))}
        if budget is not None and sum(map(len, ids.values())) * self.guide_dimension * 2 > budget:
            return {}, {}
        return ids, {role: on_device(lambda part, role=role: self.table.vectors(self.table.positions(part), role),
                                     ids[role], self.guide_dimension, self.device) for role in ids}

    def get_batch(self, rows: list[int]) -> Batch:
        ids = {column: values[rows] for column, values in self.ids.items()}
        ids["negatives"] = np.concatenate([self.negatives.row(r) for r in rows] + [np.empty(0, np.int64)])
        batch = self.lookup(rows, ids)
        batch.texts = {c: self.table.texts(self.table.positions(v)) for c, v in ids.items()}
        return batch

    def lookup(self, rows, ids: dict[str, np.ndarray]) -> Batch:
        """A batch of ``rows`` whose texts per column have ``ids`` (a subset of what the rows use), without the
        texts: the stored guide vectors of each column in its role, the ids, the known false negatives."""
        return Batch(texts={},
                     guide={c: self.guide_vectors(v, COLUMN_ROLES[c]) for c, v in ids.items()},
                     ids={c: torch.from_numpy(v).to(self.device) for c, v in ids.items()},
                     known=torch.from_numpy(padded(self.false_negatives.take(rows), PAD_ID, np.int64)).to(self.device),
                     unjudged=None if self.unjudged is None else torch.from_numpy(self.unjudged[rows]).to(self.device))

    def guide_vectors(self, ids: np.ndarray, role: str) -> torch.Tensor:
        """The stored guide vectors of ``ids`` in ``role`` on the device in float16: from the device cache when
        there is one, else read from the vector store."""
        if self.guide:
            return self.guide[role][torch.from_numpy(np.searchsorted(self.guide_ids[role], ids)).to(self.device)]
        return torch.from_numpy(self.table.vectors(self.table.positions(ids), role)).to(self.device, torch.float16)


def on_device(read, ids: np.ndarray, dimension: int, device, chunk: int = 1 << 15) -> torch.Tensor:
    """The vectors ``read(ids)`` gives (float32) on the device in float16, read a chunk at a time (all at once,
    the float32 copy would be twice the result)."""
    out = torch.empty((len(ids), dimension), dtype=torch.float16, device=device)
    for start in range(0, len(ids), chunk):
        out[start: start + chunk] = torch.from_numpy(read(ids[start: start + chunk]))
    return out
