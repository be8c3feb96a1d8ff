"""The batch plans: which rows train together in each epoch (seeded, no text twice in a batch, optionally one task
per batch), in linear time and a window of rows at a time (``EpochPlan``); or GISTEmbed's one-task chunks
(``PaperPlan``). The two ways of one task per batch
(``BATCHINGS``):

- ``shuffled`` (ours, train.run's ``--task-batches``): each task's rows shuffled each epoch and packed into batches
  with no text twice in a batch (``EpochPlan``); every row trains every epoch, or waits for the next.
- ``paper`` (GISTEmbed's, as its trainer batches MEDI): the rows sorted by task (input order within a task) and cut
  into consecutive chunks of the batch size; a chunk that spans two tasks is dropped, as is a short last chunk, and
  the chunks are shuffled. The chunks are the same every epoch (their order is drawn again per epoch, seeded), so
  the rows of a dropped chunk never train, and a text may repeat in a batch (the loss masks a repeated text).
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl


@dataclass
class RowTexts:
    """Each row's texts as their positions among the distinct texts of the rows (``n_texts``), end to end from
    ``starts``, for the batch planner: 4 bytes a text, where a Python set a row took ~1.2 kB."""

    values: np.ndarray
    starts: np.ndarray
    n_texts: int

    def __len__(self) -> int:
        return len(self.starts) - 1

    def row(self, r: int) -> np.ndarray:
        return self.values[self.starts[r]: self.starts[r + 1]]


def row_texts(values: np.ndarray, counts: np.ndarray) -> RowTexts:
    """Rows whose text ids are ``values``, ``counts[i]`` for row i, end to end, as positions among their distinct
    texts."""
    distinct, positions = np.unique(values, return_inverse=True)
    return RowTexts(positions.astype(np.int32), np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                    len(distinct))


@dataclass
class PlanRows:
    """What the planner reads of every row, in memory: its texts' ids (``values``, end to end from ``starts``), its
    task's code (codes in the order of the task names) and the rows sorted by task, stably (``by_task``). Training
    reads the same from its row table on disk (``workdir.RowTable``: the methods below), a window at a time."""

    starts: np.ndarray
    values: np.ndarray
    tasks: np.ndarray
    by_task: np.ndarray

    @classmethod
    def of(cls, texts: pl.Series, tasks: Sequence[str]) -> PlanRows:
        """From a list column of each row's text ids and each row's task name."""
        names = sorted(set(tasks))
        codes = np.searchsorted(np.array(names, dtype=object), np.array(tasks, dtype=object)).astype(np.int32)
        starts = np.concatenate([[0], np.cumsum(texts.list.len().to_numpy())]).astype(np.int64)
        return cls(starts, texts.explode().drop_nulls().to_numpy().astype(np.int64), codes,
                   np.argsort(codes, kind="stable"))

    def __len__(self) -> int:
        return len(self.tasks)

    @property
    def task_counts(self) -> np.ndarray:
        return np.bincount(self.tasks, minlength=int(self.tasks.max(initial=-1)) + 1)

    def texts_and_tasks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The texts of ``rows`` end to end, each row's count of them, and each row's task code."""
        firsts, counts = self.starts[rows], self.starts[rows + 1] - self.starts[rows]
        ends = np.cumsum(counts)
        at = np.repeat(firsts - (ends - counts), counts) + np.arange(int(ends[-1]) if len(ends) else 0)
        return self.values[at], counts, self.tasks[rows]

    def sorted_by_task(self, start: int, stop: int) -> np.ndarray:
        return self.by_task[start: stop]


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


WINDOW = 1 << 17  # rows planned together: a plan holds one window's texts and batches, whatever the rows


def plan_window(texts: RowTexts, tasks: np.ndarray, batch_size: int, rng: random.Random, task_batches: bool,
                min_batch_size: int) -> tuple[list[list[int]], int]:
    """The batches of rows 0..len(texts)-1, taken in that order (each into the first batch with room at or after the
    last batch holding one of its texts), per task with ``task_batches`` (tasks in code order, the batches then
    shuffled by ``rng``); and how many rows wait."""
    rows = list(range(len(texts)))
    groups = ([g.tolist() for g in np.split(np.argsort(tasks, kind="stable"), np.flatnonzero(np.diff(np.sort(tasks))) + 1)]
              if task_batches and len(rows) else [rows])
    batches, waiting = [], 0
    for group in groups:
        kept, left = _fill(group, texts, batch_size, min_batch_size)
        batches += kept
        waiting += left
    if task_batches:
        rng.shuffle(batches)
    return batches, waiting


def shuffled_range(n: int, key: tuple[int, ...], start: int, stop: int) -> np.ndarray:
    """Positions ``start`` .. ``stop`` of a seeded permutation of range(n), without the permutation: a four-round
    Feistel network over the smallest even number of bits that holds n, walked again where it lands past n (cycle
    walking, so each position maps to one row of range(n))."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng([k % 2**64 for k in key]).integers(0, 2**62, size=4, dtype=np.uint64)  # any seed

    def permute(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for k in keys:  # splitmix64's finalizer as the round function
            z = (right ^ k) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            left, right = right, left ^ ((z ^ (z >> np.uint64(31))) & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):  # the round function multiplies modulo 2**64
        out = permute(np.arange(start, stop, dtype=np.uint64))
        while (outside := out >= n).any():
            out[outside] = permute(out[outside])
    return out.astype(np.int64)


class EpochPlan(Sequence):
    """One epoch's batches (row indices; seeded, no text twice in a batch, optionally one task per batch) in linear
    time, planned ``window`` rows at a time and held one window at a time, so that a plan's memory does not grow
    with the rows. ``waiting``: how many rows wait for a later epoch.

    Rows up to ``window``: one window, in a seeded shuffle. More: window k holds positions k*window .. of a seeded
    permutation of the rows (``shuffled_range``). In a window, each row goes into the first batch with room at or
    after the last batch holding one of its texts; a window of n rows has ceil(n / batch_size) batches (per task
    with task batches). A row that finds no such batch (its text repeats in more rows than there are batches, e.g.
    one positive shared by many queries) waits for the next epoch, which shuffles again; so do the rows of a batch
    left smaller than ``min_batch_size``. Every window is planned once here to count the batches, and again when
    a batch of it is asked for (one window: planned once)."""

    def __init__(self, rows: PlanRows, batch_size: int, seed: int, epoch: int, task_batches: bool = False,
                 min_batch_size: int = 1, window: int = WINDOW):
        self.rows, self.seed, self.epoch, self.window = rows, seed, epoch, window
        self.batch_size, self.task_batches, self.min_batch_size = batch_size, task_batches, min_batch_size
        counts, self.waiting = [], 0
        for k in range(max(1, -(-len(rows) // window))):
            self.held = (k, *self.plan(k))
            counts.append(len(self.held[1]))
            self.waiting += self.held[2]
        self.ends = np.cumsum(counts)

    def plan(self, k: int) -> tuple[list[list[int]], int]:
        n = len(self.rows)
        if n <= self.window:  # one window: a shuffle of every row (and its rng shuffles task batches)
            rng = random.Random(self.seed * 100_003 + self.epoch)
            order = list(range(n))
            rng.shuffle(order)
            order = np.array(order, dtype=np.int64)
        else:
            rng = random.Random(f"{self.seed}/{self.epoch}/{k}")
            order = shuffled_range(n, (self.seed, self.epoch), k * self.window, min(n, (k + 1) * self.window))
        values, counts, tasks = self.rows.texts_and_tasks(order)
        batches, waiting = plan_window(row_texts(values, counts), tasks, self.batch_size, rng, self.task_batches,
                                       self.min_batch_size)
        rows = order.tolist()
        return [[rows[i] for i in batch] for batch in batches], waiting

    def __len__(self) -> int:
        return int(self.ends[-1])

    def __getitem__(self, i: int) -> list[int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        k = int(np.searchsorted(self.ends, i, side="right"))
        if self.held[0] != k:
            self.held = (k, *self.plan(k))
        return self.held[1][i - (int(self.ends[k - 1]) if k else 0)]


BATCHINGS = ("shuffled", "paper")


class PaperPlan(Sequence):
    """GISTEmbed's batches of one epoch (row indices) and how many rows they leave out (``waiting``): the
    task-sorted rows (``PlanRows.sorted_by_task``; input order within a task) in consecutive chunks of ``batch_size``,
    each of one task and full, in a seeded order per epoch (seeded as a one-window EpochPlan). Only the chunks'
    starts are held."""

    def __init__(self, rows: PlanRows, batch_size: int, seed: int, epoch: int):
        self.rows, self.size = rows, batch_size
        starts = np.arange(0, len(rows) - batch_size + 1, batch_size)
        # Sorted, so a chunk spans two tasks exactly when its first and last rows differ in task.
        ends = np.cumsum(rows.task_counts)
        same = np.searchsorted(ends, starts, side="right") == np.searchsorted(ends, starts + batch_size - 1, side="right")
        self.starts = starts[same].tolist()
        random.Random(seed * 100_003 + epoch).shuffle(self.starts)
        self.waiting = len(rows) - batch_size * len(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> list[int]:
        start = self.starts[i]
        return self.rows.sorted_by_task(start, start + self.size).tolist()


def epoch_plan(batching: str, rows: PlanRows, batch_size: int, seed: int, epoch: int, task_batches: bool,
               min_batch_size: int = 1) -> EpochPlan | PaperPlan:
    """One epoch's batches ``batching``'s way (``BATCHINGS``; ``paper`` is one task a batch whatever
    ``task_batches``); its ``waiting``: how many rows it leaves out (``paper``) or leaves waiting (``shuffled``)."""
    if batching == "paper":
        return PaperPlan(rows, batch_size, seed, epoch)
    return EpochPlan(rows, batch_size, seed, epoch, task_batches, min_batch_size)
