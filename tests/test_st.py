"""gist_mining.st: sentence-transformers' stock trainer with the stored guide, against train.run and GISTEmbedLoss."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import build_tiny_model, make_pairs, run_stage

from gist_mining.loss import GISTLoss, LossRules
from gist_mining.st import StoredGuideGISTLoss, mined_dataset
from gist_mining.training.data import COLUMNS, Batch, TrainingData
from gist_mining.training.step import student_forward
from pipeline import embed, mask

SETTINGS = [("absolute", 0.0), ("absolute", 0.1), ("relative", 0.05)]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("st")
    make_pairs(64, seed=5).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    # a margin that leaves most anchors two negatives with the random guide, and still flags false negatives
    assert run_stage(mask, "--work", root / "w", "--k", 30, "--negatives-per-anchor", 2, "--margin", -0.2) == 0
    return root / "w"


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """No dropout: every path sees the same embeddings of the same texts."""
    return build_tiny_model(tmp_path_factory.mktemp("student"), seed=4, dropout=0.0)


def load(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def collate(model, rows) -> tuple[list[dict], torch.Tensor]:
    """The stock collator's batch, split into columns as the stock trainer does (collect_features)."""
    from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator

    inputs = SentenceTransformerDataCollator(model.preprocess)(list(rows))
    columns = [c for c in rows[0] if c != "label"]
    return [{k[len(c) + 1:]: v for k, v in inputs.items() if k.startswith(c + "_")} for c in columns], inputs["label"]


def fresh(features: list[dict]) -> list[dict]:
    """Shallow copies: a forward pass writes its outputs into the dicts it is given."""
    return [dict(f) for f in features]


def grads_of(model, loss_fn) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    assert len(grads) > 10
    return loss.item(), grads


def assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6)
    for mine, theirs in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_dataset_holds_the_mined_rows(work):
    import polars as pl

    mined = pl.read_parquet(work / "mined" / "*.parquet")
    full = mined.filter(pl.col("negative_ids").list.len() >= 2)
    with pytest.warns(UserWarning, match=f"{mined.height - full.height} of {mined.height} anchors .* left out"):
        dataset = mined_dataset(work, 2, short="drop")
    assert dataset.column_names == ["anchor", "positive", "negative_1", "negative_2", "label"]
    assert 0 < len(dataset) == full.height < mined.height  # short anchors dropped, as the n-tuple export does
    text = dict(pl.read_parquet(work / "texts.parquet").select("text_id", "text").iter_rows())
    by_anchor = {r["anchor_id"]: r for r in full.iter_rows(named=True)}
    in_anchor_order = mined.sort("anchor_id")["anchor_id"].to_list()
    for row in dataset:
        anchor_id, query_id, positive_id, *negatives, at = row["label"]
        mined_row = by_anchor[anchor_id]
        assert in_anchor_order[at] == anchor_id  # the row of the trainer's row table, in anchor order
        assert (query_id, positive_id, negatives) == (mined_row["query_id"], mined_row["positive_id"],
                                                      mined_row["negative_ids"][:2])
        assert [row[c] for c in ("anchor", "positive", "negative_1", "negative_2")] == [text[i] for i in
                                                                                        (query_id, positive_id, *negatives)]


@pytest.fixture(scope="module")
def unflagged(work, tmp_path_factory):
    """The same texts mined with no margin rule: mining flags no false negatives, which GISTEmbedLoss cannot know."""
    import shutil

    copy = tmp_path_factory.mktemp("unflagged") / "w"
    shutil.copytree(work, copy)
    assert run_stage(mask, "--work", copy, "--overwrite", "--k", 30, "--margin-strategy", "none", "--negatives-per-anchor", 1) == 0
    return copy


def loss_and_grads(model, work, rows, strategy, margin, rules=LossRules()) -> tuple[tuple, Batch]:
    """StoredGuideGISTLoss's loss and gradients on these data set rows, and train.run's batch of the same anchors."""
    features, labels = collate(model, rows)
    ours = StoredGuideGISTLoss(model, work, temperature=0.05, margin_strategy=strategy, margin=margin, rules=rules)
    data = TrainingData(work, 1, "cpu")
    batch = data.get_batch([r[-1] for r in rows["label"]])
    assert batch.texts == {"queries": rows["anchor"], "positives": rows["positive"], "negatives": rows["negative_1"]}
    return grads_of(model, lambda: ours(fresh(features), labels)), batch


def distinct_texts(dataset, n: int):
    chosen, seen = [], set()
    for i, (_, *ids, _) in enumerate(dataset["label"]):
        if not seen & set(ids):
            chosen, seen = chosen + [i], seen | set(ids)
    assert len(chosen) >= n
    return dataset.select(chosen[:n])


@pytest.mark.parametrize("strategy, margin", SETTINGS)
def test_same_batch_equals_train_run_and_gist_embed_loss(work, unflagged, student, tiny_guide, strategy, margin):
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    model = load(student)
    model.eval()
    # train.run's step on the same anchors: its batch assembly, one forward per column, GISTLoss; with the known
    # false negatives of mining in the batch
    rows = mined_dataset(work, 1, short="drop").select(range(12))
    stored, batch = loss_and_grads(model, work, rows, strategy, margin)
    assert torch.isin(batch.known, torch.cat([batch.ids[c] for c in COLUMNS])).any()
    gist = GISTLoss(0.05, strategy, margin)
    embed_ = lambda c: student_forward(model, batch.texts[c], "cpu", False, "")  # noqa: E731
    assert_same(stored, grads_of(model, lambda: gist(batch.with_student({c: embed_(c) for c in COLUMNS}))[0]))

    # sentence-transformers' loss with the guide running live (same tokenizer) on the same stock batch; one without
    # a text twice, as BatchSamplers.NO_DUPLICATES makes them (GISTEmbedLoss takes a duplicate of an anchor's
    # positive for a negative, unless the guide masks it)
    rows = distinct_texts(mined_dataset(unflagged, 1, short="drop"), 12)
    stored, batch = loss_and_grads(model, unflagged, rows, strategy, margin)
    assert batch.known.numel() == 0 or batch.known.eq(-1).all()
    live = GISTEmbedLoss(model, load(tiny_guide), temperature=0.05, margin_strategy=strategy, margin=margin)
    features, _ = collate(model, rows)
    assert_same(stored, grads_of(model, lambda: live(features, labels=None)))


@pytest.mark.parametrize("rules", [LossRules(self_filter=True), LossRules(hardness_strength=5.0),
                                   LossRules(false_negatives="positives"), LossRules(suspect_weight=0.3)],
                         ids=["self", "hardness", "fn-positives", "suspect-weight"])
def test_the_loss_rules_equal_train_runs(work, student, rules):
    """#26's rules in the stock trainer's loss: the same loss and gradients as train.run's GISTLoss on the batch."""
    model = load(student)
    model.eval()
    rows = mined_dataset(work, 1, short="drop").select(range(12))
    stored, batch = loss_and_grads(model, work, rows, "absolute", 0.0, rules)
    gist = GISTLoss(0.05, "absolute", 0.0, rules=rules)
    embed_ = lambda c: student_forward(model, batch.texts[c], "cpu", False, "")  # noqa: E731
    assert_same(stored, grads_of(model, lambda: gist(batch.with_student({c: embed_(c) for c in COLUMNS}))[0]))
    plain = grads_of(model, lambda: GISTLoss(0.05, "absolute", 0.0)(batch.with_student({c: embed_(c) for c in COLUMNS}))[0])
    assert stored[0] != pytest.approx(plain[0], rel=1e-4)  # the rule changed the loss: it was passed on


def test_mini_batch_size_equals_no_caching_plain_and_in_matryoshka(work, student):
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    model = load(student)
    model.eval()
    features, labels = collate(model, mined_dataset(work, 2, short="drop").select(range(10)))
    plain = StoredGuideGISTLoss(model, work)
    cached = StoredGuideGISTLoss(model, work, mini_batch_size=3)
    assert_same(grads_of(model, lambda: cached(fresh(features), labels)), grads_of(model, lambda: plain(fresh(features), labels)))

    # MatryoshkaLoss: the loss summed over truncated dimensions, computed by hand from one set of embeddings
    def by_hand():
        full = [model(f)["sentence_embedding"] for f in fresh(features)]
        return sum(plain.calculate_loss([[e[:, :dim]] for e in full], labels) for dim in (32, 16, 8))

    expected = grads_of(model, by_hand)
    for inner in (plain, cached):
        wrapped = MatryoshkaLoss(model, inner, [32, 16, 8])
        assert_same(grads_of(model, lambda wrapped=wrapped: wrapped(fresh(features), labels)), expected)


def test_a_changed_work_directory_is_refused(work, student, tmp_path):
    import json
    import shutil

    from gist_mining.errors import UsageError

    model = load(student)
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    features, labels = collate(model, mined_dataset(copy, 1, short="drop").select(range(4)))
    # mined again with other rules: the data set's rows no longer match
    assert run_stage(mask, "--work", copy, "--overwrite", "--k", 30, "--negatives-per-anchor", 1, "--margin", 0.2) == 0
    with pytest.raises(ValueError, match="anchor_id .* is not what mined/ holds now"):
        StoredGuideGISTLoss(model, copy)(features, labels)
    # a broken chain: the candidates no longer the ones mined/ was built from
    manifest = copy / "candidates_manifest.json"
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), fingerprint="0" * 16)))
    with pytest.raises(UsageError) as refused:
        StoredGuideGISTLoss(model, copy)
    assert "\n" not in str(refused.value)


def train_args(out, **settings):
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.base.sampler import BatchSamplers

    return SentenceTransformerTrainingArguments(
        str(out), max_steps=5, per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1, save_strategy="no",
        batch_sampler=BatchSamplers.NO_DUPLICATES, seed=3, disable_tqdm=True, **settings)


@pytest.mark.parametrize("matryoshka", [False, True])
def test_stock_trainer_runs_five_steps_and_logs_to_tensorboard(work, tiny_model, tmp_path, matryoshka):
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss

    pytest.importorskip("tensorboard")
    model = load(tiny_model)
    before = [p.detach().clone() for p in model.parameters()]
    loss = StoredGuideGISTLoss(model, work)
    trainer = SentenceTransformerTrainer(
        model=model, args=train_args(tmp_path, report_to=["tensorboard"]),
        train_dataset=mined_dataset(work, 2, short="drop"), loss=MatryoshkaLoss(model, loss, [32, 16]) if matryoshka else loss)
    loss.log_masked_fraction(trainer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4, 5]
    assert all(0 < h["masked_fraction"] < 1 and h["loss"] > 0 for h in logged)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (event_file,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    for tag, key in (("train/loss", "loss"), ("train/masked_fraction", "masked_fraction")):
        assert [(e.step, round(e.value, 4)) for e in events.Scalars(tag)] == [(h["step"], round(h[key], 4))
                                                                              for h in logged]


def test_lora_adapter_trains_only_the_adapter(work, tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformerTrainer

    peft = pytest.importorskip("peft")
    model = load(tiny_model)
    # peft's own call on the transformer, which works with every peft; sentence-transformers' model.add_adapter goes
    # through transformers, whose version 5 refuses peft < 0.22 (the newest on PyPI in December 2026 is 0.21.2)
    peft.get_peft_model(model[0].model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = StoredGuideGISTLoss(model, work)
    SentenceTransformerTrainer(model=model, args=train_args(tmp_path, report_to="none"),
                               train_dataset=mined_dataset(work, 1, short="drop"), loss=loss).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)  # B starts at zero: a step through the loss moved it


def _ddp_worker(rank: int, world: int, port: int, work, student, out: dict):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = load(student)
    model.eval()
    rows = mined_dataset(work, 2, short="drop").select(range(12))
    share = rows.select(range(rank * 5, 12) if rank else range(5))  # unequal shares: 5 and 7 anchors
    features, labels = collate(model, share)
    for name, mini_batch_size in (("plain", None), ("cached", 2)):
        loss = StoredGuideGISTLoss(model, work, mini_batch_size=mini_batch_size)
        out[rank, name] = grads_of(model, lambda loss=loss: loss(fresh(features), labels))
    dist.destroy_process_group()


@pytest.mark.slow  # concurrent processes
def free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def two_gloo_ranks(worker, *args) -> dict:
    """What ``worker(rank, 2, port, *args, out)`` leaves in ``out`` in two gloo processes."""
    import torch.multiprocessing as mp

    out = mp.Manager().dict()
    mp.spawn(worker, args=(2, free_port(), *args, out), nprocs=2, join=True)
    return out


@pytest.mark.slow  # concurrent processes
def test_two_gloo_processes_equal_one(work, student):
    model = load(student)
    model.eval()
    features, labels = collate(model, mined_dataset(work, 2, short="drop").select(range(12)))
    single = grads_of(model, lambda: StoredGuideGISTLoss(model, work)(fresh(features), labels))
    out = two_gloo_ranks(_ddp_worker, work, student)
    # averaged over ranks, as DDP averages, the loss and gradients of the whole batch in one process
    for name in ("plain", "cached"):
        ranks = [out[rank, name] for rank in (0, 1)]
        averaged = ((ranks[0][0] + ranks[1][0]) / 2, [(a + b) / 2 for a, b in zip(ranks[0][1], ranks[1][1])])
        assert_same(averaged, single)


def torchrun_stock_trainer(work, student, out, short: str = "drop") -> tuple[dict, list[tuple[list[int], int]]]:
    """2 gloo processes of tests/st_trainer_run.py: the first step's log, and each rank's first batch (its anchor ids,
    its number of columns)."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()),
                           str(ROOT / "tests" / "st_trainer_run.py"), str(work), str(student), str(out), short],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    first = json.loads((out / "log.json").read_text())[0]
    batches = [json.loads((out / f"anchors-{rank}.json").read_text())[0] for rank in (0, 1)]
    assert [len(anchors) for anchors, _ in batches] == [4, 4] and not set(batches[0][0]) & set(batches[1][0])
    return first, batches


def assert_logged(first: dict, value: float, grads: list[torch.Tensor], masked_fraction: float):
    assert first["loss"] == pytest.approx(value, rel=1e-4)
    assert first["grad_norm"] == pytest.approx(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item(),
                                               rel=1e-4)
    assert first["masked_fraction"] == pytest.approx(masked_fraction, abs=1e-4)


@pytest.mark.slow  # torchrun
def test_stock_trainer_under_torchrun_equals_one_process(work, student, tmp_path):
    """2 gloo processes of the stock trainer, 4 anchors each: the first step's logged loss, gradient norm and masked
    fraction are those of one process over both ranks' anchors (candidates gathered with their gradients)."""
    first, batches = torchrun_stock_trainer(work, student, tmp_path)
    model = load(student)
    dataset = mined_dataset(work, 2, short="drop")
    position = {label[0]: i for i, label in enumerate(dataset["label"])}
    features, labels = collate(model, dataset.select([position[a] for anchors, _ in batches for a in anchors]))
    loss = StoredGuideGISTLoss(model, work)
    assert_logged(first, *grads_of(model, lambda: loss(features, labels)), loss.masked_fraction())


@pytest.mark.slow  # torchrun
def test_kept_data_sets_under_torchrun_equal_one_process(work, student, tmp_path):
    """short="keep" under 2 gloo processes, the data sets taken in turn: in the first step the ranks' batches have
    different numbers of negatives (columns), and the logged loss, gradient norm and masked fraction are those of
    train.run's batch of both ranks' anchors in one process."""
    import shutil

    mixed = tmp_path / "w"
    shutil.copytree(work, mixed)
    # anchors with two, one and no negatives, each kind enough for the two steps' batches of 4
    assert run_stage(mask, "--work", mixed, "--refilter", "--negatives-per-anchor", 2, "--margin", -0.1) == 0
    assert all(len(rows) >= 8 for rows in mined_dataset(mixed, 2, short="keep").values())
    first, batches = torchrun_stock_trainer(mixed, student, tmp_path, short="keep")
    assert batches[0][1] != batches[1][1]
    model = load(student)
    data = TrainingData(mixed, 2, "cpu")
    batch = data.get_batch(np.searchsorted(data.rows.every("anchor_id")[0], [a for anchors, _ in batches for a in anchors]).tolist())
    loss = StoredGuideGISTLoss(model, mixed)
    masked = []

    def one_process():
        value, fraction = loss.gist(batch.with_student(
            {c: student_forward(model, batch.texts[c], "cpu", False, "") for c in COLUMNS}))
        masked.append(fraction.item())
        return value

    assert_logged(first, *grads_of(model, one_process), masked[0])


@pytest.fixture(scope="module")
def mostly_short(work, tmp_path_factory):
    """Re-mined with few candidates: anchors with two, one and no negatives, as mining leaves classification data."""
    import shutil

    copy = tmp_path_factory.mktemp("short") / "w"
    shutil.copytree(work, copy)
    assert run_stage(mask, "--work", copy, "--refilter", "--negatives-per-anchor", 2, "--margin", 0.2) == 0
    return copy


def test_keep_holds_every_anchor_one_data_set_per_number_of_negatives(mostly_short):
    import polars as pl

    kept = mined_dataset(mostly_short, 2, short="keep")
    assert list(kept) == ["negatives_2", "negatives_1", "negatives_0"]  # this mining leaves anchors of each kind
    mined = {r["anchor_id"]: r for r in pl.read_parquet(mostly_short / "mined" / "*.parquet").iter_rows(named=True)}
    seen = []
    for name, rows in kept.items():
        n = int(name.rsplit("_", 1)[1])
        assert rows.column_names == ["anchor", "positive", *(f"negative_{i + 1}" for i in range(n)), "label"]
        for anchor_id, query_id, positive_id, *negatives, _ in rows["label"]:
            seen.append(anchor_id)
            assert (query_id, positive_id, negatives) == (mined[anchor_id]["query_id"], mined[anchor_id]["positive_id"],
                                                          mined[anchor_id]["negative_ids"][:2])
    assert sorted(seen) == sorted(mined)  # every anchor once, as train.run trains them
    assert len(mined_dataset(mostly_short, 2, short="drop")) == len(kept["negatives_2"])  # drop: the full rows only


def test_a_batch_without_negatives_equals_train_runs(mostly_short, student):
    model = load(student)
    model.eval()
    rows = mined_dataset(mostly_short, 2, short="keep")["negatives_0"].select(range(6))
    features, labels = collate(model, rows)
    stored = grads_of(model, lambda: StoredGuideGISTLoss(model, mostly_short)(fresh(features), labels))
    data = TrainingData(mostly_short, 2, "cpu")
    batch = data.get_batch([r[-1] for r in rows["label"]])
    assert batch.texts["negatives"] == [] and batch.texts["queries"] == rows["anchor"]
    embed_ = lambda c: student_forward(model, batch.texts[c], "cpu", False, "")  # noqa: E731
    assert_same(stored, grads_of(model, lambda: GISTLoss(0.05, "absolute", 0.0)(
        batch.with_student({c: embed_(c) for c in COLUMNS}))[0]))


def test_stock_trainer_takes_the_kept_data_sets(mostly_short, tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformerTrainer

    model = load(tiny_model)
    loss = StoredGuideGISTLoss(model, mostly_short)
    kept = mined_dataset(mostly_short, 2, short="keep")
    trainer = SentenceTransformerTrainer(model=model, args=train_args(tmp_path, report_to="none"), train_dataset=kept,
                                         loss=loss)
    loss.log_masked_fraction(trainer)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 5 and all(h["loss"] > 0 for h in logged)


@pytest.mark.parametrize("n", [1, 2])
def test_mined_dataset_is_the_n_tuple_export_mapped_from_the_work_directory(work, n):
    """Against the export's own n-tuple (built in memory with Polars): the same rows in the same order, with the
    ids as label; kept short anchors in one data set per number of negatives; the files memory-mapped from mined/."""
    from gist_mining import export

    mined = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")
    ids = {row[0]: (*row, at) for at, row in
           enumerate(mined.select("anchor_id", "query_id", "positive_id", "negative_ids").iter_rows())}
    for short in ("drop", "keep"):
        built = mined_dataset(work, n, short)
        parts = {f"negatives_{n}": built} if short == "drop" else dict(built)
        rows, _, _, _ = export.mined_rows(work, n, short)
        counts = rows["negative_ids"].list.len()
        assert sorted(parts) == sorted(f"negatives_{k}" for k in counts.unique().to_list())
        for name, part in parts.items():
            k = int(name.split("_")[1])
            expected = export.n_tuple(rows.filter(counts == k), k).rename({"query": "anchor"}).to_dicts()
            assert [{c: r[c] for c in r if c != "label"} for r in part.to_list()] == expected
            # the ids, then the row's index in anchor order (the trainer's row table)
            assert all(r["label"] == [*ids[r["label"][0]][:3], *ids[r["label"][0]][3][:k], ids[r["label"][0]][4]]
                       for r in part.to_list())
            assert part.cache_files and all(Path(f["filename"]).parent == work / "mined" for f in part.cache_files)


def test_the_kept_rows_are_in_the_exports_order():
    """export.mined_rows' order (each query's first anchor among the rows it keeps, then the anchor) on random rows:
    repeated queries whose first anchor is left out too (anchors 1, 3, 5 of queries Q, P, Q, the first left out:
    3 before 5)."""
    from gist_mining.st_dataset import export_order

    rng = np.random.default_rng(0)
    cases = [(np.array([1, 3, 5]), np.array([7, 8, 7]), np.array([1, 2]))]
    for _ in range(30):
        anchors = np.sort(rng.choice(1000, 40, replace=False))
        cases.append((anchors, rng.integers(0, 8, 40), np.flatnonzero(rng.random(40) < 0.6)))
    for anchors, queries, kept in cases:
        frame = pl.DataFrame({"row": np.arange(len(anchors)), "anchor_id": anchors, "query_id": queries})[kept]
        expected = (frame.with_columns(pl.col("anchor_id").min().over("query_id").alias("first_anchor"))
                    .sort("first_anchor", "anchor_id")["row"].to_list())
        assert export_order(anchors, queries, kept).tolist() == expected
    assert export_order(*cases[0]).tolist() == [1, 2]
