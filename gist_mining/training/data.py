"""The training data: the mined rows, their texts and the guide's stored vectors, and ``get_batch``, one step's
anchors with everything the loss needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gist_mining import workdir
from gist_mining.distill import SoftLabels
from gist_mining.loss import Column, GuidedBatch
from gist_mining.settings import parse_bytes

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
    negatives_per_row: np.ndarray | None = None  # the negatives column holds, row after row, this many of each row

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
    loss computes their scores in float32). Nothing per row or per text is held in memory: a batch reads its rows'
    records from the row table (``workdir.RowTable``, which also serves the epoch's planner a window of rows at a
    time: ``plan_rows``), and its texts and vectors from the text table and the vector store (``workdir.TextTable``)
    at the positions the records hold. ``guide_cache``: bytes of float16 vectors the device may hold (None: no
    bound): when every vector the rows use fits, they are moved there once and a step's guide blocks are an index
    lookup there; else each batch's are read. ``false_negatives``: each row's first that many known false
    negatives join its negatives column, where the loss's rules can count them as the anchor's extra positives
    (LossRules.false_negatives)."""

    def __init__(self, work: Path, negatives: int, device, false_negatives: int = 0, guide_cache: int | None = 0):
        self.table = workdir.TextTable(work)
        self.rows = self.plan_rows = workdir.RowTable(work, negatives, false_negatives, self.table)
        self.manifest, self.task_names = self.rows.manifest, self.rows.task_names
        # Mining took the anchors the guide cannot judge out of its margin rule: so does the in-batch rule.
        self.judges_all = self.manifest.rules.unjudged_rank_min is None
        self.guide_dimension = self.table.documents.dimension
        self.device = device
        self.guide_at, self.guide = self._cached(guide_cache)

    def __len__(self) -> int:
        return len(self.rows)

    def _cached(self, budget: int | None) -> tuple[dict, dict]:
        """The guide vectors the rows use on the device, by role (keyed by text table position), when they fit
        ``budget``; else none."""
        if budget == 0:
            return {}, {}
        queries, positives, documents = self.rows.every("query_at", "positive_at", "documents_at")
        at = {"query": np.unique(queries), "document": np.unique(np.concatenate([positives, documents[documents >= 0]]))}
        if budget is not None and sum(map(len, at.values())) * self.guide_dimension * 2 > budget:
            return {}, {}
        return at, {role: on_device(lambda part, role=role: self.table.vectors(part, role), at[role],
                                    self.guide_dimension, self.device) for role in at}

    def get_batch(self, rows: list[int]) -> Batch:
        """Rows ``rows``, each with every document of its row (``RowTable``) in the negatives column."""
        records = self.rows.read(rows)
        (ids, counts), (positions, _) = workdir.documents_of(records), workdir.documents_of(records, "_at")
        return self.batch(records, (ids, positions), counts, with_texts=True)

    def batch(self, records: np.ndarray, negatives: tuple[np.ndarray, np.ndarray], counts: np.ndarray,
              with_texts: bool) -> Batch:
        """The batch of the rows with ``records`` whose negatives column holds ``negatives`` (ids, text table
        positions), ``counts[i]`` of row i, end to end: the stored guide vectors of each column in its role, the
        ids, the known false negatives, and ``with_texts`` the texts."""
        columns = {"queries": (records["query_id"], records["query_at"]),
                   "positives": (records["positive_id"], records["positive_at"]), "negatives": negatives}
        ends = np.cumsum([len(at) for _, at in columns.values()]).tolist()
        # The texts' records, one read for the batch: for the texts, and the vectors unless the device holds them.
        entries = (self.table.entries(np.concatenate([at for _, at in columns.values()]))
                   if with_texts or not self.guide else None)
        every_text = self.table.texts_of(entries) if with_texts else []
        texts, guide = {}, {}
        for (column, (_, at)), start, end in zip(columns.items(), [0, *ends], ends):
            role = COLUMN_ROLES[column]
            if with_texts:
                texts[column] = every_text[start: end]
            if self.guide:
                guide[column] = self.guide[role][torch.from_numpy(np.searchsorted(self.guide_at[role], at)).to(self.device)]
            else:
                vectors = self.table.vectors_of(entries[start: end], role)
                guide[column] = torch.from_numpy(vectors).to(self.device, torch.float16)
        unjudged = None if self.judges_all else torch.from_numpy(records["unjudged"] == 1).to(self.device)
        # A copy of each: a field of the records is strided, which torch refuses.
        return Batch(texts=texts, guide=guide,
                     ids={c: torch.from_numpy(ids.copy()).to(self.device) for c, (ids, _) in columns.items()},
                     known=torch.from_numpy(self.rows.known_of(records)).to(self.device), unjudged=unjudged,
                     negatives_per_row=counts)


def on_device(read, ids: np.ndarray, dimension: int, device, chunk: int = 1 << 15) -> torch.Tensor:
    """The vectors ``read(ids)`` gives (float32) on the device in float16, read a chunk at a time (all at once,
    the float32 copy would be twice the result)."""
    out = torch.empty((len(ids), dimension), dtype=torch.float16, device=device)
    for start in range(0, len(ids), chunk):
        out[start: start + chunk] = torch.from_numpy(read(ids[start: start + chunk]))
    return out
