"""Batch plans: no text twice in a batch, every row used or counted as waiting, task batches, repeated texts."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
from conftest import plan_batches


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
    for seed in (0, 1):
        plan, waiting = plan_batches(rows, ["t"] * len(rows), 64, seed=seed, epoch=0)
        assert plan == reference_plan([set(row) for row in rows], 64, seed) and waiting > 0


def test_shuffled_range_is_a_seeded_permutation():
    from gist_mining.training.batches import shuffled_range

    for n in (1, 2, 3, 5, 64, 1000, 4097):
        whole = shuffled_range(n, (7, 0), 0, n)
        assert sorted(whole.tolist()) == list(range(n))  # each position one row
        cut = n // 3
        assert np.array_equal(np.concatenate([shuffled_range(n, (7, 0), 0, cut), shuffled_range(n, (7, 0), cut, n)]),
                              whole)  # a window of it is the same slice
        if n >= 64:
            assert not np.array_equal(whole, shuffled_range(n, (7, 1), 0, n))  # another epoch, another order
            assert not np.array_equal(whole, np.arange(n))


def test_windowed_plans_are_valid_and_hold_one_window():
    """Rows past the window: planned a window at a time (window 100 over 1 000 rows), each plan valid (no text twice
    in a batch, every row used or waiting once, one task per batch), and the same batches in any order of access."""
    from gist_mining.training.batches import EpochPlan, PlanRows

    rng = random.Random(2)
    texts = [{rng.randrange(300), 1000 + rng.randrange(500), 2000 + i} for i in range(1000)]
    tasks = [rng.choice("xy") for _ in range(1000)]
    rows = PlanRows.of(pl.Series([sorted(t) for t in texts], dtype=pl.List(pl.Int64)), tasks)
    for task_batches in (False, True):
        plan = EpochPlan(rows, 16, seed=3, epoch=0, task_batches=task_batches, window=100)
        batches = list(plan)
        check_plan(texts, tasks, 16, batches, plan.waiting, task_batches)
        assert plan.waiting < 100 and len(plan.ends) == 10
        order = list(range(len(plan)))
        rng.shuffle(order)
        assert [plan[i] for i in order] == [batches[i] for i in order]
        # windows hold rows from all over the table, in another draw each epoch
        first = sorted(r for b in batches[: int(plan.ends[0])] for r in b)
        assert first[-1] - first[0] > 800
        assert batches != list(EpochPlan(rows, 16, seed=3, epoch=1, task_batches=task_batches, window=100))


def test_any_seed_plans_past_one_window():
    from gist_mining.training.batches import EpochPlan, PlanRows

    rows = PlanRows.of(pl.Series([[i] for i in range(50)], dtype=pl.List(pl.Int64)), ["t"] * 50)
    assert sorted(r for b in EpochPlan(rows, 8, seed=-1, epoch=0, window=20) for r in b) == list(range(50))
