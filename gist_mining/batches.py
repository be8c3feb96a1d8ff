"""Batch plans: seeded, with no text twice in a batch, optionally one task per batch (MEDI style)."""

from __future__ import annotations

import random
from collections import deque


def _fill(rows: list[int], texts: list[set[int]], batch_size: int) -> list[list[int]]:
    """Greedy batches in the given order; a row that repeats a text already in the batch waits for the next."""
    batches, waiting = [], deque(rows)
    while waiting:
        batch, seen, skipped = [], set(), []
        while waiting and len(batch) < batch_size:
            row = waiting.popleft()
            if texts[row] & seen:
                skipped.append(row)
            else:
                batch.append(row)
                seen |= texts[row]
        waiting.extendleft(reversed(skipped))
        batches.append(batch)
    return batches


def plan_batches(texts: list[set[int]], tasks: list[str], batch_size: int, seed: int, epoch: int,
                 task_batches: bool = False) -> list[list[int]]:
    """Row indices for each batch of one epoch; every row is used exactly once."""
    rng = random.Random(seed * 100_003 + epoch)
    rows = list(range(len(texts)))
    rng.shuffle(rows)
    if not task_batches:
        return _fill(rows, texts, batch_size)
    batches = []
    for task in sorted(set(tasks)):
        batches += _fill([r for r in rows if tasks[r] == task], texts, batch_size)
    rng.shuffle(batches)
    return batches
