"""Batch plans: seeded, no text twice in a batch, optionally one task per batch (MEDI style), linear time.

An epoch of n rows has ceil(n / batch_size) batches (per task with task batches). Rows are taken in a
seeded shuffle; each goes into the first batch with room at or after the last batch holding one of its
texts. A row that finds no such batch (its text repeats in more rows than there are batches, e.g. one
positive shared by many queries) waits for the next epoch, which shuffles again; so do the rows of a batch
left smaller than ``min_batch_size``. ``plan_batches`` says how many rows wait.
"""

from __future__ import annotations

import random


class _NextWithRoom:
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


def _fill(rows: list[int], texts: list[set[int]], batch_size: int, min_batch_size: int) -> tuple[list[list[int]], int]:
    n_batches = -(-len(rows) // batch_size)
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    after: dict[int, int] = {}  # text -> the first batch that may still take it
    room = _NextWithRoom(n_batches)
    waiting = 0
    for row in rows:
        target = room.find(max([after.get(t, 0) for t in texts[row]], default=0))
        if target == n_batches:
            waiting += 1
            continue
        batches[target].append(row)
        if len(batches[target]) == batch_size:
            room.close(target)
        for t in texts[row]:
            after[t] = target + 1
    kept = [b for b in batches if len(b) >= min_batch_size and b]
    return kept, waiting + sum(len(b) for b in batches if len(b) < min_batch_size)


def plan_batches(texts: list[set[int]], tasks: list[str], batch_size: int, seed: int, epoch: int,
                 task_batches: bool = False, min_batch_size: int = 1) -> tuple[list[list[int]], int]:
    """Row indices for each batch of one epoch, and how many rows wait for a later epoch."""
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
