"""Batch plans: no text twice in a batch, every row used or counted as waiting, task batches, repeated texts."""

from __future__ import annotations

import random

import numpy as np
import polars as pl

from gist_mining.training.batches import RowTexts
from gist_mining.training.batches import plan_batches as plan_from


def plan_batches(texts: list[set[int]], *args, **kwargs):
    """The planner over rows given as sets of any ints (it takes them as RowTexts)."""
    universe = np.unique([t for row in texts for t in row])
    return plan_from(RowTexts(pl.Series([sorted(row) for row in texts]), universe), *args, **kwargs)


def check_plan(texts, tasks, batch_size, plan, waiting, task_batches=False):
    used = sorted(r for b in plan for r in b)
    assert len(used) == len(set(used)) and len(used) + waiting == len(texts)
    for batch in plan:
        seen = [t for r in batch for t in texts[r]]
        assert len(seen) == len(set(seen)) and 0 < len(batch) <= batch_size
        if task_batches:
            assert len({tasks[r] for r in batch}) == 1


def test_plans_are_valid_seeded_and_differ_by_epoch():
    rng = random.Random(0)
    texts = [{rng.randrange(60), 1000 + rng.randrange(40)} for _ in range(300)]
    tasks = [rng.choice("xyz") for _ in range(300)]
    for task_batches in (False, True):
        plan, waiting = plan_batches(texts, tasks, 16, seed=1, epoch=0, task_batches=task_batches)
        check_plan(texts, tasks, 16, plan, waiting, task_batches)
        assert (plan, waiting) == plan_batches(texts, tasks, 16, seed=1, epoch=0, task_batches=task_batches)
        assert plan != plan_batches(texts, tasks, 16, seed=1, epoch=1, task_batches=task_batches)[0]


def test_a_text_shared_by_many_rows_fills_one_slot_per_batch_and_the_rest_wait():
    """6 400 rows, 640 of them sharing one positive, batches of 32: 200 batches, each can hold one of the
    640; the other 440 wait for a later epoch, and the batches stay full instead of shrinking to one row."""
    n, shared = 6400, 640
    texts = [{i, 10**6} if i < shared else {i, 10**6 + i} for i in range(n)]
    plan, waiting = plan_batches(texts, ["t"] * n, 32, seed=0, epoch=0)
    check_plan(texts, ["t"] * n, 32, plan, waiting)
    assert len(plan) == 200 and waiting == shared - 200
    assert sum(1 for b in plan for r in b if r < shared) == 200
    assert sum(len(b) == 32 for b in plan) >= 180  # the 440 empty places fall in the last batches


def test_batches_under_the_minimum_wait():
    texts = [{i} for i in range(70)]
    plan, waiting = plan_batches(texts, ["t"] * 70, 32, seed=0, epoch=0, min_batch_size=8)
    assert [len(b) for b in plan] == [32, 32] and waiting == 6


def test_same_plans_as_the_set_based_planner_it_replaced():
    """Against the planner before RowTexts (a set per row, a dict per text; kept in benchmarks/batch_planner.py):
    rows whose texts repeat within the row and across rows, so that some rows wait."""
    from benchmarks.batch_planner import reference_plan

    rng = random.Random(3)
    rows = [[rng.randrange(200) for _ in range(5)] for _ in range(3000)]  # a text in ~75 rows, 47 batches
    for row in rows[::7]:
        row[3] = row[0]  # a negative that is the row's own query
    universe = np.unique([t for row in rows for t in row])
    for seed in (0, 1):
        plan, waiting = plan_from(RowTexts(pl.Series(rows), universe), ["t"] * len(rows), 64, seed=seed, epoch=0)
        assert plan == reference_plan([set(row) for row in rows], 64, seed) and waiting > 0
