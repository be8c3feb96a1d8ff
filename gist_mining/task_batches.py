"""One task per batch in sentence-transformers' ``SentenceTransformerTrainer``: ``task_batch_sampler``, a batch
sampler over gist_mining.training.batches' plans, the two ways train.run's ``--task-batching`` makes them:

- ``shuffled`` (ours, train.run's ``--task-batches``): each task's rows shuffled each epoch and packed into batches
  with no text twice in a batch (``gist_mining.training.batches.EpochPlan``); every row trains every epoch, or waits for the next.
- ``paper`` (GISTEmbed's, as its trainer batches MEDI): the rows sorted by task (input order within a task) and cut
  into consecutive chunks of the batch size; a chunk that spans two tasks is dropped, as is a short last chunk, and
  the chunks are shuffled. The chunks are the same every epoch (their order is drawn again per epoch, seeded), so
  the rows of a dropped chunk never train, and a text may repeat in a batch (the loss masks a repeated text).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
from sentence_transformers.base.sampler import DefaultBatchSampler

from gist_mining import workdir
from gist_mining.training.batches import BATCHINGS, epoch_plan

LABELS = 1 << 20  # labels read at a time where every row's is read
GATHER = 16_384  # scattered rows' labels read at a time


def task_batch_sampler(work, batching: str = "paper"):
    """A ``batch_sampler`` for ``SentenceTransformerTrainingArguments``: one task per batch, ``batching``'s way, over
    ``gist_mining.st.mined_dataset(work, ...)`` (each data set of its ``keep`` DatasetDict apart). The tasks are
    the trainer's row table's (``workdir.RowTable``), found by each row's index there (the label's last entry)::

        args = SentenceTransformerTrainingArguments("out", batch_sampler=task_batch_sampler("runs/medi", "paper"))

    The trainer calls set_epoch at each epoch, which draws that epoch's batches (seeded by ``args.seed``)."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {', '.join(BATCHINGS)}, not {batching!r}")
    # The table StoredGuideGISTLoss reads (every mined negative): the rows of every share are the same.
    rows = workdir.RowTable(Path(work), workdir.checked_mined_manifest(Path(work)).rules.num_negatives)

    def make(dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed: int = 0):
        return _TaskBatchSampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                                 rows=rows, batching=batching)

    return make


class DatasetRows:
    """What the batch planner reads of a ``mined_dataset`` data set's rows (``training.batches.PlanRows``' methods):
    each row's texts' ids from its label column, read for the rows a window asks for (``datasets`` maps the file),
    and its task from the trainer's row table, by its index there (the label's last entry). The shuffled plan holds
    nothing per row; GISTEmbed's chunks need the rows sorted by task (8 bytes a row), made at their first ask."""

    def __init__(self, dataset, table: workdir.RowTable):
        self.labels, self.table = dataset.select_columns(["label"]).with_format("arrow"), table

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows' texts' ids end to end (the label between the anchor id and the row: query, positive,
        negatives), each row's count of them, and each row's index in the row table."""
        labels = self.labels[rows]["label"].combine_chunks()
        lengths = pc.list_value_length(labels).to_numpy(zero_copy_only=False).astype(np.int64)
        values = pc.list_flatten(labels).to_numpy(zero_copy_only=False).astype(np.int64)
        ends = np.cumsum(lengths)
        at = values[ends - 1]
        if len(at) and (at.min() < 0 or at.max() >= len(self.table)):
            raise ValueError(f"{self.table.path}: the data set's rows are not this table's; rebuild it with mined_dataset")
        inner = np.ones(len(values), bool)
        inner[ends - lengths], inner[ends - 1] = False, False
        return values[inner], lengths - 2, at

    def texts_and_tasks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # a part of a window at a time: datasets gathers scattered rows one Arrow slice each (~1 kB a row)
        parts = [self._read(rows[start: start + GATHER]) for start in range(0, max(len(rows), 1), GATHER)]
        texts, counts, at = (np.concatenate(column) for column in zip(*parts))
        return texts, counts, self.table.tasks_of(at)

    @cached_property
    def _by_task(self) -> tuple[np.ndarray, np.ndarray]:
        """Every row's task (labels read a chunk at a time): the rows sorted by task, stably, and each task's count."""
        tasks = np.concatenate([self.table.tasks_of(self._read(slice(start, start + LABELS))[2])
                                for start in range(0, max(len(self), 1), LABELS)])
        return np.argsort(tasks, kind="stable"), np.bincount(tasks, minlength=len(self.table.task_names))

    @property
    def task_counts(self) -> np.ndarray:
        return self._by_task[1]

    def sorted_by_task(self, start: int, stop: int) -> np.ndarray:
        return self._by_task[0][start: stop]


class _TaskBatchSampler(DefaultBatchSampler):
    """sentence-transformers' batch sampler interface (``__iter__``, ``__len__``, ``set_epoch``) over
    ``epoch_plan``; with ``drop_last``, shuffled batches smaller than the batch size wait as train.run's
    --min-batch-size makes them."""

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns, generator, seed, *, rows, batching):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
                         generator=generator, seed=seed)
        self.rows = DatasetRows(dataset, rows)
        self.batching, self._planned = batching, {}

    def _batches(self) -> Sequence[list[int]]:
        if self.epoch not in self._planned:
            self._planned = {self.epoch: epoch_plan(self.batching, self.rows, self.batch_size, self.seed, self.epoch, True,
                                                    self.batch_size if self.drop_last else 1)}
        return self._planned[self.epoch]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
