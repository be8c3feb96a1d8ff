"""GISTEmbed's batching (--task-batching paper) against a hand-built task list and a brute-force oracle, in train.run
and as a batch sampler of sentence-transformers' trainer."""

from __future__ import annotations

import random
from dataclasses import replace

import polars as pl
import pytest
from conftest import make_pairs, paper_batches, run_stage

from gist_mining.errors import UsageError
from gist_mining.st import StoredGuideGISTLoss, mined_dataset
from gist_mining.task_batches import task_batch_sampler
from gist_mining.training import train
from gist_mining.training.batches import EpochPlan, PaperPlan
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import TrainingData
from gist_mining.training.loop import epoch_batches
from pipeline import embed, mask


def test_a_hand_built_task_list():
    tasks = ["b", "a", "b", "c", "a", "a", "b", "a", "c", "b", "a"]
    # sorted by task, input order within: a 1 4 5 7 10 | b 0 2 6 9 | c 3 8; in twos: [1 4] [5 7] [10 0] spans a and
    # b, [2 6] [9 3] spans b and c, [8] is short
    batches, left_out = paper_batches(tasks, 2, seed=0, epoch=0)
    assert sorted(batches) == [[1, 4], [2, 6], [5, 7]] and left_out == 5


def oracle(tasks: list[str], batch_size: int) -> list[list[int]]:
    """Brute force by positions: a task's rows fill positions start .. start + n - 1 of the task-sorted list, and
    chunk k (positions k*B .. k*B + B - 1) is kept when it lies inside one task's positions."""
    kept, start = [], 0
    for task in sorted(set(tasks)):
        rows = [i for i, t in enumerate(tasks) if t == task]
        for k in range(len(tasks) // batch_size + 1):
            if start <= k * batch_size and (k + 1) * batch_size <= start + len(rows):
                kept.append(rows[k * batch_size - start: (k + 1) * batch_size - start])
        start += len(rows)
    return sorted(kept)


@pytest.mark.parametrize("seed", range(20))
def test_random_task_lists_against_the_oracle(seed):
    rng = random.Random(seed)
    tasks = [rng.choice("abcde"[: rng.randint(1, 5)]) for _ in range(rng.randint(0, 120))]
    if rng.random() < 0.5:  # runs of tasks, as MEDI lists them
        tasks.sort(key=lambda t: rng.random() if t == "z" else t)
    batch_size = rng.randint(1, 9)
    epochs = [paper_batches(tasks, batch_size, seed=7, epoch=e) for e in range(3)]
    for batches, left_out in epochs:
        assert sorted(batches) == oracle(tasks, batch_size)
        assert left_out == len(tasks) - batch_size * len(batches)
        assert all(len({tasks[r] for r in b}) == 1 for b in batches)
    assert epochs[0] == paper_batches(tasks, batch_size, seed=7, epoch=0)  # seeded
    if len(epochs[0][0]) > 4:
        assert epochs[0][0] != epochs[1][0]  # reshuffled each epoch


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("paper")
    # tasks in runs of 10, 13 and 11 rows (batches of 4: chunks [8..11] and [20..23] span two tasks, [32, 33] is
    # short: 6 chunks kept, 10 rows left out)
    pairs = make_pairs(34, seed=9).with_columns(task=pl.Series(["t1"] * 10 + ["t2"] * 13 + ["t3"] * 11),
                                                negative=pl.concat_list(pl.col("positive") + " night"))  # one each
    pairs.write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    assert run_stage(mask, "--work", root / "w", "--negatives-from", "given", "--margin-strategy", "none") == 0
    return root / "w"


@pytest.mark.slow
def test_train_run_takes_the_paper_batches(work, tiny_model, tmp_path, monkeypatch, capsys):
    seen = []
    get_batch = TrainingData.get_batch
    monkeypatch.setattr(TrainingData, "get_batch", lambda self, rows: seen.append(list(rows)) or get_batch(self, rows))
    config = replace(TrainConfig(), student=replace(TrainConfig().student, name=str(tiny_model)),
                     batch_size=4, epochs=2, task_batching="paper", seed=5, lr=1e-4)
    train(work, tmp_path / "model", config)
    rows = TrainingData(work, 1, "cpu").plan_rows
    expected = [b for e in range(2) for b in PaperPlan(rows, 4, seed=5, epoch=e)]
    assert seen == expected and len(seen) == 2 * 6
    assert "10 of 34 rows are in no batch" in capsys.readouterr().err


def test_no_batch_of_one_task_is_refused(work):
    data = TrainingData(work, 1, "cpu")
    config = replace(TrainConfig(), batch_size=16, task_batching="paper")
    with pytest.raises(UsageError, match="no batch of 16 rows of one task"):  # runs of 10, 13, 11 rows: none fits
        epoch_batches(data, config, 1, 0)


def test_the_shuffled_task_batches_are_unchanged(work):
    data = TrainingData(work, 1, "cpu")
    config = replace(TrainConfig(), batch_size=4, task_batches=True, seed=5)
    expected = list(EpochPlan(data.plan_rows, 4, 5, 0, task_batches=True))
    assert list(epoch_batches(data, config, 1, 0)) == expected


@pytest.mark.slow
def test_sentence_transformers_trainer_takes_the_paper_batches(work, tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    dataset = mined_dataset(work, 1, short="drop")  # one data set: every row has its negative
    anchors = [label[0] for label in dataset["label"]]
    data = TrainingData(work, 1, "cpu")
    anchor_ids, tasks = data.rows.every("anchor_id", "task")
    task_of = dict(zip(anchor_ids.tolist(), [data.task_names[c] for c in tasks]))
    row_tasks = [task_of[a] for a in anchors]
    sampler = task_batch_sampler(work, "paper")(dataset, batch_size=4, drop_last=False, seed=3)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        assert list(sampler) == paper_batches(row_tasks, 4, seed=3, epoch=epoch)[0] and len(sampler) == 6

    model = SentenceTransformer(str(tiny_model), device="cpu")
    loss = StoredGuideGISTLoss(model, work)
    seen = []
    forward = loss.forward
    loss.forward = lambda features, labels: seen.append(labels[:, 0].tolist()) or forward(features, labels)
    args = SentenceTransformerTrainingArguments(str(tmp_path), num_train_epochs=1, per_device_train_batch_size=4,
                                                learning_rate=1e-4, save_strategy="no", seed=3, disable_tqdm=True,
                                                report_to="none", batch_sampler=task_batch_sampler(work, "paper"))
    SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss).train()
    assert seen == [[anchors[r] for r in b] for b in paper_batches(row_tasks, 4, seed=3, epoch=0)[0]]
    shuffled = task_batch_sampler(work, "shuffled")(dataset, batch_size=4, drop_last=False, seed=3)
    assert all(len({row_tasks[r] for r in b}) == 1 for b in shuffled) and sum(map(len, shuffled)) == len(dataset)


def test_the_sampler_reads_a_data_sets_rows_as_the_oracle_plans_them(work):
    """Each data set's batches, read a window at a time from its label column and the row table, equal the plans of
    its rows held in memory (conftest's oracles), also through datasets' indices mapping (a select); a data set of
    another table's rows is refused."""
    from conftest import plan_batches

    task_of = dict(pl.read_parquet(work / "mined" / "*.parquet").select("anchor_id", "task").iter_rows())
    dataset = mined_dataset(work, 1, short="drop")
    for chosen in (dataset, dataset.select(range(len(dataset) - 1, -1, -2))):
        labels = chosen["label"]
        tasks = [task_of[label[0]] for label in labels]
        shuffled = task_batch_sampler(work, "shuffled")(chosen, batch_size=4, drop_last=False, seed=3)
        assert list(shuffled) == plan_batches([label[1:-1] for label in labels], tasks, 4, 3, 0, True)[0]
        paper = task_batch_sampler(work, "paper")(chosen, batch_size=4, drop_last=False, seed=3)
        assert list(paper) == paper_batches(tasks, 4, seed=3, epoch=0)[0]
    foreign = dataset.map(lambda row: {"label": [*row["label"][:-1], 10**6]})
    with pytest.raises(ValueError, match="not this table's; rebuild it with mined_dataset"):
        list(task_batch_sampler(work, "shuffled")(foreign, batch_size=4, drop_last=False, seed=3))
