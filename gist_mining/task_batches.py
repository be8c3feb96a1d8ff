"""One task per batch, two ways, for both trainers (train.run's ``--task-batching``, and a batch sampler for
sentence-transformers' ``SentenceTransformerTrainer``: ``task_batch_sampler``).

- ``shuffled`` (ours, train.run's ``--task-batches``): each task's rows shuffled each epoch and packed into batches
  with no text twice in a batch (``train.run.plan_batches``); every row trains every epoch, or waits for the next.
- ``paper`` (GISTEmbed's, as its trainer batches MEDI): the rows sorted by task (input order within a task) and cut
  into consecutive chunks of the batch size; a chunk that spans two tasks is dropped, as is a short last chunk, and
  the chunks are shuffled. The chunks are the same every epoch (their order is drawn again per epoch, seeded), so
  the rows of a dropped chunk never train, and a text may repeat in a batch (the loss masks a repeated text).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from sentence_transformers.base.sampler import DefaultBatchSampler

BATCHINGS = ("shuffled", "paper")


def paper_batches(tasks: Sequence[str], batch_size: int, seed: int, epoch: int) -> tuple[list[list[int]], int]:
    """GISTEmbed's batches of one epoch (row indices) and how many rows they leave out: the task-sorted rows in
    consecutive chunks of ``batch_size``, each of one task and full, in a seeded order per epoch (the seeding of
    train.run.plan_batches)."""
    order = sorted(range(len(tasks)), key=tasks.__getitem__)  # stable: input order within a task
    chunks = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    # Sorted, so a chunk spans two tasks exactly when its first and last rows differ in task.
    kept = [c for c in chunks if len(c) == batch_size and tasks[c[0]] == tasks[c[-1]]]
    random.Random(seed * 100_003 + epoch).shuffle(kept)
    return kept, len(tasks) - batch_size * len(kept)


def epoch_batches(batching: str, row_texts, tasks: Sequence[str], batch_size: int, seed: int, epoch: int,
                  min_batch_size: int = 1) -> tuple[list[list[int]], int]:
    """One task per batch, ``batching``'s way: (batches, rows left out or waiting)."""
    if batching == "paper":
        return paper_batches(tasks, batch_size, seed, epoch)
    from train.run import plan_batches  # train.run imports this module

    return plan_batches(row_texts, list(tasks), batch_size, seed, epoch, task_batches=True,
                        min_batch_size=min_batch_size)


def task_batch_sampler(work, batching: str = "paper"):
    """A ``batch_sampler`` for ``SentenceTransformerTrainingArguments``: one task per batch, ``batching``'s way, over
    ``gist_mining.st.mined_dataset(work, ...)`` (each data set of its ``keep`` DatasetDict apart). The tasks are
    mined/'s, found by each row's anchor id (the label's first entry)::

        args = SentenceTransformerTrainingArguments("out", batch_sampler=task_batch_sampler("runs/medi", "paper"))

    The trainer calls set_epoch at each epoch, which draws that epoch's batches (seeded by ``args.seed``)."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {', '.join(BATCHINGS)}, not {batching!r}")
    from gist_mining import workdir

    manifest = workdir.checked_mined_manifest(Path(work))
    mined = pl.read_parquet(workdir.verified(Path(work), manifest, "mine"), columns=["anchor_id", "task"])
    task_of = dict(mined.iter_rows())

    def make(dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None, seed: int = 0):
        return _TaskBatchSampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed,
                                 task_of=task_of, batching=batching)

    return make


class _TaskBatchSampler(DefaultBatchSampler):
    """sentence-transformers' batch sampler interface (``__iter__``, ``__len__``, ``set_epoch``) over
    ``epoch_batches``; with ``drop_last``, shuffled batches smaller than the batch size wait as train.run's
    --min-batch-size makes them."""

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns, generator, seed, *, task_of, batching):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, valid_label_columns=valid_label_columns,
                         generator=generator, seed=seed)
        from train.run import RowTexts

        labels = pl.Series(dataset["label"], dtype=pl.List(pl.Int64))
        self.tasks = [task_of[a] for a in labels.list.first().to_list()]
        texts = labels.list.slice(1)  # query, positive and negatives' ids
        self.row_texts = RowTexts(texts, np.unique(texts.explode().drop_nulls().to_numpy()))
        self.batching, self._planned = batching, {}

    def _batches(self) -> list[list[int]]:
        if self.epoch not in self._planned:
            self._planned = {self.epoch: epoch_batches(self.batching, self.row_texts, self.tasks, self.batch_size,
                                                       self.seed, self.epoch,
                                                       self.batch_size if self.drop_last else 1)[0]}
        return self._planned[self.epoch]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
