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
from pathlib import Path

import polars as pl
from sentence_transformers.base.sampler import DefaultBatchSampler

from gist_mining import workdir
from gist_mining.training.batches import BATCHINGS, PlanRows, epoch_plan


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


class _TaskBatchSampler(DefaultBatchSampler):
    """sentence-transformers' batch sampler interface (``__iter__``, ``__len__``, ``set_epoch``) over
    ``epoch_plan``; with ``drop_last``, shuffled batches smaller than the batch size wait as train.run's
    --min-batch-size makes them."""

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns, generator, seed, *, rows, batching):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
                         generator=generator, seed=seed)
        label = pl.Series("label", dataset["label"], dtype=pl.List(pl.Int64))
        at = label.list.last().to_numpy()
        if len(at) and (at.min() < 0 or at.max() >= len(rows)):
            raise ValueError(f"{rows.path}: the data set's rows are not this table's; rebuild it with mined_dataset")
        tasks = [rows.task_names[code] for code in rows.every("task")[at]]  # the task column alone
        # the label between the anchor id and the row: the query's, the positive's and the negatives' ids
        texts = label.to_frame().select(pl.col("label").list.slice(1, pl.col("label").list.len() - 2))["label"]
        self.rows = PlanRows.of(texts, tasks)
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
