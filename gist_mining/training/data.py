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
from gist_mining.training.batches import RowTexts
from gist_mining.workdir import VectorStore

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


class TrainingData:
    """The mined rows, their texts, and the guide vectors of every text they use, in the role it has (queries
    in the query role, positives and negatives in the document role), moved to the training device once, so
    a step's guide blocks are an index lookup there. Only what the rows use is read, whatever the pool's size:
    the vectors in float16 (half the memory of float32; the loss computes their scores in float32), the texts
    as one Arrow column sorted by id (Python strings are made per batch), the id lists as numpy arrays.
    ``false_negatives``: each row's first that many known false negatives join its negatives column, where
    the loss's rules can count them as the anchor's extra positives (LossRules.false_negatives)."""

    def __init__(self, work: Path, negatives: int, device, false_negatives: int = 0):
        self.manifest = workdir.checked_mined_manifest(work)  # checks the chain embeddings -> candidates -> mined
        rows = pl.read_parquet(workdir.verified(work, self.manifest, "mine")).sort("anchor_id")
        self.anchor_ids = rows["anchor_id"].to_numpy()
        self.tasks = rows["task"].to_list()
        self.ids = {"queries": rows["query_id"].to_numpy(), "positives": rows["positive_id"].to_numpy()}
        documents = pl.concat_list(pl.col("negative_ids").list.head(negatives),
                                   pl.col("false_negative_ids").list.head(false_negatives))
        self.negatives = Ragged(rows.select(documents).to_series())
        # Known false negatives: mining's, and every positive of the anchor's query (a query repeated with other
        # positives, or with several qrels): another anchor's positive or negative in the batch may be one. Masked,
        # not taken as extra positives, so that the loss stays GISTEmbed's one-positive cross-entropy.
        positives = rows.group_by("query_id").agg(pl.col("positive_id").unique().alias("query_positives"))
        others = pl.col("query_positives").list.set_difference(pl.concat_list("positive_id"))  # not the row's own
        self.false_negatives = (rows.join(positives, on="query_id", how="left", maintain_order="left")
                                .select(pl.concat_list("false_negative_ids", others)).to_series().to_arrow())
        # Mining took the anchors the guide cannot judge out of its margin rule: so does the in-batch rule.
        self.unjudged = (is_unjudged(rows["candidates_above_positive"], rows["n_candidates"]).to_numpy()
                         if self.manifest.rules.unjudged_rank_min is not None else None)
        self.guide_ids = {"query": np.unique(self.ids["queries"]),
                          "document": np.unique(np.concatenate([self.ids["positives"], self.negatives.values]))}
        texts = workdir.read_texts(work, np.union1d(*self.guide_ids.values()))
        self.text_ids, self.texts = texts["text_id"].to_numpy(), texts["text"]
        self.guide = {role: on_device(VectorStore(work, role), ids, device) for role, ids in self.guide_ids.items()}
        self.device = device
        # Each row's texts, for the batch planner; built once, as every epoch plans from them.
        lists = rows.select(pl.concat_list("query_id", "positive_id", documents))
        self.row_texts = RowTexts(lists.to_series(), self.text_ids)

    def get_batch(self, rows: list[int]) -> Batch:
        ids = {column: values[rows] for column, values in self.ids.items()}
        ids["negatives"] = np.concatenate([self.negatives.row(r) for r in rows] + [np.empty(0, np.int64)])
        batch = self.lookup(rows, ids)
        batch.texts = {c: self.texts.gather(np.searchsorted(self.text_ids, v)).to_list() for c, v in ids.items()}
        return batch

    def lookup(self, rows, ids: dict[str, np.ndarray]) -> Batch:
        """A batch of ``rows`` whose texts per column have ``ids`` (a subset of what the rows use), without the
        texts: the stored guide vectors of each column in its role, the ids, the known false negatives."""
        return Batch(texts={},
                     guide={c: self.guide[COLUMN_ROLES[c]][torch.from_numpy(np.searchsorted(self.guide_ids[COLUMN_ROLES[c]], v))
                                                    .to(self.device)] for c, v in ids.items()},
                     ids={c: torch.from_numpy(v).to(self.device) for c, v in ids.items()},
                     known=torch.from_numpy(padded(self.false_negatives.take(rows), PAD_ID, np.int64)).to(self.device),
                     unjudged=None if self.unjudged is None else torch.from_numpy(self.unjudged[rows]).to(self.device))


def on_device(store: VectorStore, ids: np.ndarray, device, chunk: int = 1 << 15) -> torch.Tensor:
    """The stored vectors of ``ids`` on the device in float16, read a chunk at a time (the store returns float32:
    all at once, that copy would be twice the result)."""
    out = torch.empty((len(ids), store.dimension), dtype=torch.float16, device=device)
    for start in range(0, len(ids), chunk):
        out[start: start + chunk] = torch.from_numpy(store.get(ids[start: start + chunk]))
    return out
