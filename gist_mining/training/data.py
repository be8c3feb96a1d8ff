"""The training data: the mined rows, their texts and the guide's stored vectors, and ``get_batch``, one step's
anchors with everything the loss needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gist_mining import workdir
from gist_mining.distill import SoftLabels
from gist_mining.lists import PAD_ID, Ragged, padded
from gist_mining.loss import Column, GuidedBatch
from gist_mining.settings import parse_bytes
from gist_mining.training.batches import PlanRows

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


RELEASE_EVERY = 64  # batches between hand-backs of the mapped tables' pages (TrainingData.release)
ALL = "all"  # --guide-cache: every vector the rows use on the device, whatever their size


def guide_cache_bytes(text: str) -> int | None:
    """--guide-cache as bytes (None: ``all``)."""
    return None if text.strip().lower() == ALL else parse_bytes(text, "--guide-cache")


class TrainingData:
    """The mined rows, and per batch their texts and the guide vectors of each text in the role it has (queries
    in the query role, positives and negatives in the document role), as float16 on the training device (the
    loss computes their scores in float32). Nothing per row or per text is held in memory: the rows are views of
    the memory-mapped row table (``workdir.RowTable``), a batch's texts and vectors are read from the
    memory-mapped text table and the vector store (``workdir.TextTable``), and an epoch is planned a window of rows
    at a time (``plan_rows``, training.batches). ``guide_cache``: bytes of float16 vectors the device may hold
    (None: no bound): when every vector the rows use fits, they are moved there once and a step's guide blocks are
    an index lookup there; else each batch's are read. ``false_negatives``: each row's first that many known false
    negatives join its negatives column, where the loss's rules can count them as the anchor's extra positives
    (LossRules.false_negatives)."""

    def __init__(self, work: Path, negatives: int, device, false_negatives: int = 0, guide_cache: int | None = 0):
        self.rows = rows = workdir.RowTable(work, negatives, false_negatives)
        self.manifest, self.anchor_ids, self.task_names = rows.manifest, rows.anchor_ids, rows.task_names
        self.ids = {"queries": rows.query_ids, "positives": rows.positive_ids}
        self.negatives = Ragged(*rows.documents)
        # Known false negatives: mining's, and every positive of the anchor's query (another anchor's positive or
        # negative in the batch may be one).
        self.false_negatives = rows.known
        # Mining took the anchors the guide cannot judge out of its margin rule: so does the in-batch rule.
        self.unjudged = rows.unjudged if self.manifest.rules.unjudged_rank_min is not None else None
        self.plan_rows = PlanRows(*rows.texts, rows.tasks, rows.by_task, self.release)
        self.table = workdir.TextTable(work)
        self.guide_dimension = self.table.documents.dimension
        self.device = device
        self.guide_ids, self.guide = self._cached(guide_cache)
        self.batches_read = 0

    def release(self) -> None:
        """Hand back the pages of the mapped tables read so far (workdir.MappedTable.release)."""
        self.rows.mapped.release()
        self.table.mapped.release()

    def __len__(self) -> int:
        return len(self.anchor_ids)

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
        self.batches_read += 1
        if self.batches_read % RELEASE_EVERY == 0:  # a long run holds what it read lately, not every table it read
            self.release()
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
