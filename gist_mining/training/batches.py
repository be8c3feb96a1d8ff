"""The batch plans: which rows train together in each epoch (seeded, no text twice in a batch, optionally one task
per batch), in linear time; or GISTEmbed's one-task chunks (``paper_batches``). The two ways of one task per batch
(``BATCHINGS``):

- ``shuffled`` (ours, train.run's ``--task-batches``): each task's rows shuffled each epoch and packed into batches
  with no text twice in a batch (``plan_batches``); every row trains every epoch, or waits for the next.
- ``paper`` (GISTEmbed's, as its trainer batches MEDI): the rows sorted by task (input order within a task) and cut
  into consecutive chunks of the batch size; a chunk that spans two tasks is dropped, as is a short last chunk, and
  the chunks are shuffled. The chunks are the same every epoch (their order is drawn again per epoch, seeded), so
  the rows of a dropped chunk never train, and a text may repeat in a batch (the loss masks a repeated text).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence

import numpy as np
import polars as pl

from gist_mining.lists import Ragged


class RowTexts(Ragged):
    """Each row's texts as their positions in ``universe`` (the sorted ids of every text the rows use), end to end,
    for the batch planner: 4 bytes a text, where a Python set a row took ~1.2 kB (1.15 GB at a million rows of
    9 texts)."""

    def __init__(self, lists: pl.Series, universe: np.ndarray):
        super().__init__(lists)
        self.values, self.n_texts = np.searchsorted(universe, self.values).astype(np.int32), len(universe)


class NextWithRoom:
    """Union-find over batch indices: the first batch at or after i that is not full, in near O(1)."""

    def __init__(self, n_batches: int):
        self.parent = list(range(n_batches + 1))  # index n_batches: no batch has room

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def close(self, i: int) -> None:
        self.parent[i] = i + 1


def _fill(rows: list[int], texts: RowTexts, batch_size: int, min_batch_size: int) -> tuple[list[list[int]], int]:
    n_batches = -(-len(rows) // batch_size)
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    # Python arrays, not numpy: the loop reads and writes one item at a time, and a numpy item is a new scalar object.
    values, starts = array("i", texts.values.tobytes()), array("q", texts.starts.tobytes())
    after = array("i", bytes(4 * texts.n_texts))  # text -> the first batch that may still take it
    room = NextWithRoom(n_batches)
    waiting = 0
    for row in rows:
        row_texts = values[starts[row]: starts[row + 1]]
        target = room.find(max(map(after.__getitem__, row_texts), default=0))
        if target == n_batches:
            waiting += 1
            continue
        batches[target].append(row)
        if len(batches[target]) == batch_size:
            room.close(target)
        for t in row_texts:
            after[t] = target + 1
    kept = [b for b in batches if len(b) >= min_batch_size and b]
    return kept, waiting + sum(len(b) for b in batches if len(b) < min_batch_size)


def plan_batches(texts: RowTexts, tasks: list[str], batch_size: int, seed: int, epoch: int,
                 task_batches: bool = False, min_batch_size: int = 1) -> tuple[list[list[int]], int]:
    """Row indices for each batch of one epoch, and how many rows wait for a later epoch: seeded, no text twice
    in a batch, optionally one task per batch (MEDI style), linear time.

    An epoch of n rows has ceil(n / batch_size) batches (per task with task batches). Rows are taken in a
    seeded shuffle; each goes into the first batch with room at or after the last batch holding one of its
    texts. A row that finds no such batch (its text repeats in more rows than there are batches, e.g. one
    positive shared by many queries) waits for the next epoch, which shuffles again; so do the rows of a batch
    left smaller than ``min_batch_size``.
    """
    rng = random.Random(seed * 100_003 + epoch)
    rows = list(range(len(texts)))
    rng.shuffle(rows)
    groups = [[r for r in rows if tasks[r] == task] for task in sorted(set(tasks))] if task_batches else [rows]
    batches, waiting = [], 0
    for group in groups:
        kept, left = _fill(group, texts, batch_size, min_batch_size)
        batches += kept
        waiting += left
    if task_batches:
        rng.shuffle(batches)
    return batches, waiting


BATCHINGS = ("shuffled", "paper")


def paper_batches(tasks: Sequence[str], batch_size: int, seed: int, epoch: int) -> tuple[list[list[int]], int]:
    """GISTEmbed's batches of one epoch (row indices) and how many rows they leave out: the task-sorted rows in
    consecutive chunks of ``batch_size``, each of one task and full, in a seeded order per epoch (the seeding of
    plan_batches)."""
    order = sorted(range(len(tasks)), key=tasks.__getitem__)  # stable: input order within a task
    chunks = [order[start: start + batch_size] for start in range(0, len(order), batch_size)]
    # Sorted, so a chunk spans two tasks exactly when its first and last rows differ in task.
    kept = [c for c in chunks if len(c) == batch_size and tasks[c[0]] == tasks[c[-1]]]
    random.Random(seed * 100_003 + epoch).shuffle(kept)
    return kept, len(tasks) - batch_size * len(kept)


def epoch_plan(batching: str, row_texts: RowTexts, tasks: list[str], batch_size: int, seed: int, epoch: int,
               task_batches: bool, min_batch_size: int = 1) -> tuple[list[list[int]], int]:
    """One epoch's batches ``batching``'s way (``BATCHINGS``; ``paper`` is one task a batch whatever
    ``task_batches``), and how many rows they leave out (``paper``) or leave waiting (``shuffled``)."""
    if batching == "paper":
        return paper_batches(tasks, batch_size, seed, epoch)
    return plan_batches(row_texts, tasks, batch_size, seed, epoch, task_batches, min_batch_size)
