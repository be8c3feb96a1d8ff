"""train.run end to end on tiny models: it learns, resumes exactly, saves a loadable model, evaluates."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import eval_split, gist_loss, make_pairs, run_stage

from gist_mining.loss import GISTLoss
from gist_mining.training.batches import row_texts
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import COLUMNS, TrainingData
from gist_mining.training.step import cached_backward, student_forward
from gist_mining.workdir import VectorStore
from pipeline import embed, mask
from train import run as train_command


@pytest.fixture(scope="module")
def mined_work(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("mined")
    make_pairs(64, seed=2).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    assert run_stage(mask, "--work", root / "w", "--k", 20, "--negatives-per-anchor", 2) == 0
    eval_split(root, pl.read_parquet(root / "pairs.parquet").head(20))  # a small retrieval split, the same kind of text
    return root


def fixed_batch_loss(model_path, work, tiny_guide) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    batch = TrainingData(work, 1, "cpu").get_batch(list(range(16)))
    with torch.no_grad():
        student = {c: model.encode(batch.texts[c], convert_to_tensor=True) for c in COLUMNS}
        return gist_loss(temperature=0.05)(batch.with_student(student))[0].item()


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


COMMON = ["--batch-size", 8, "--lr", 1e-3, "--temperature", 0.05, "--negatives-in-batch", 1, "--seed", 3]


@pytest.mark.slow
def test_training_lowers_the_loss_and_saves_a_loadable_model(mined_work, tiny_model, tiny_guide, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "model"
    assert run_stage(train_command, "--work", mined_work / "w", "--out", out, "--student", tiny_model, "--epochs", 4,
                     *COMMON) == 0
    before = fixed_batch_loss(tiny_model, mined_work / "w", tiny_guide)
    after = fixed_batch_loss(out, mined_work / "w", tiny_guide)
    assert after < before * 0.8
    reloaded = SentenceTransformer(str(out), device="cpu")
    assert reloaded.encode(["the cat sat"]).shape == (1, 32)
    record = json.loads((out / "gist_training.json").read_text())
    mined_manifest = json.loads((mined_work / "w" / "mined_manifest.json").read_text())
    assert record["mined_fingerprint"] == mined_manifest["fingerprint"] and record["steps"] == 32
    steps = [m for m in metrics(out) if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 33)) and all(0 < m["masked_fraction"] < 1 for m in steps)


def test_resume_continues_exactly(mined_work, tiny_model, tmp_path):
    args = ["--work", mined_work / "w", "--student", tiny_model, "--max-steps", 6, "--save-steps", 3, *COMMON]
    assert run_stage(train_command, *args, "--out", tmp_path / "whole") == 0
    # an interrupted run: what the first run had on disk at its step-3 checkpoint, and a log that went further
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-0000003", cut / "checkpoints" / "step-0000003")
    (cut / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics(tmp_path / "whole")[:4]))
    assert run_stage(train_command, *args, "--out", cut, "--resume") == 0
    whole = [m["loss"] for m in metrics(tmp_path / "whole")]
    resumed = [m["loss"] for m in metrics(cut)]
    assert resumed == whole and len(whole) == 6


def test_guide_filter_none_masks_only_self_pairs(mined_work, tiny_model, tmp_path):
    base = ["--work", mined_work / "w", "--student", tiny_model, "--max-steps", 3, *COMMON]
    assert run_stage(train_command, *base, "--out", tmp_path / "guided") == 0
    assert run_stage(train_command, *base, "--out", tmp_path / "plain", "--guide-filter", "none") == 0
    guided, plain = metrics(tmp_path / "guided"), metrics(tmp_path / "plain")
    # B anchors and M negatives give 3B + M candidates per anchor, 2 of them self-pairs (q-q and p-p)
    for g, p in zip(guided, plain):
        assert p["masked_fraction"] == pytest.approx(2 / (3 * p["anchors"] + p["negatives"]), abs=1e-4)
        assert g["masked_fraction"] > p["masked_fraction"]


def test_task_batches_and_evaluation(mined_work, tiny_model, tmp_path, capsys):
    out = tmp_path / "model"
    assert run_stage(train_command, "--work", mined_work / "w", "--out", out, "--student", tiny_model, "--max-steps", 4,
                     "--task-batches", "--eval", mined_work / "eval", "--eval-steps", 2, *COMMON) == 0
    evals = [m for m in metrics(out) if "eval_ndcg@10" in m]
    assert [m["step"] for m in evals] == [0, 2, 4]
    assert all(0 <= m["eval_ndcg@10"] <= 1 for m in evals)
    record = json.loads((out / "gist_training.json").read_text())
    assert record["eval_before"]["ndcg@10"] == evals[0]["eval_ndcg@10"]
    assert "eval after training" in capsys.readouterr().err


def test_missing_mined_tables_is_a_usage_error(tmp_path, capsys):
    assert run_stage(train_command, "--work", tmp_path, "--out", tmp_path / "m") == 2
    assert "no mined_manifest.json" in capsys.readouterr().err


def test_batches_come_from_the_mined_table_texts_and_store(mined_work):
    """Texts, negatives, known false negatives and guide vectors of a batch equal a plain read of the tables."""
    work = mined_work / "w"
    data = TrainingData(work, 2, "cpu")
    table = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")
    with_negatives = np.flatnonzero(table["negative_ids"].list.len().to_numpy()).tolist()
    rows = [with_negatives[2], 0, with_negatives[0], with_negatives[1] + 1, with_negatives[1]]
    mined = table[rows]
    text_of = dict(pl.read_parquet(work / "texts.parquet").select("text_id", "text").iter_rows())
    negatives = [i for n in mined["negative_ids"].to_list() for i in n[:2]]
    batch = data.get_batch(rows)
    assert batch.texts == {"queries": [text_of[i] for i in mined["query_id"]],
                           "positives": [text_of[i] for i in mined["positive_id"]],
                           "negatives": [text_of[i] for i in negatives]}
    assert batch.ids["negatives"].tolist() == negatives and len(negatives) >= 3
    known = [[i for i in row if i != -1] for row in batch.known.tolist()]
    # mining's false negatives, then every other positive of the row's query (tests/test_inputs_positives.py has
    # queries with several; here each has one: its own, which is the label, not a false negative)
    assert known == mined["false_negative_ids"].to_list() and any(known)
    store = VectorStore(work)
    torch.testing.assert_close(batch.guide["queries"], torch.from_numpy(store.get(mined["query_id"].to_numpy())).half())
    torch.testing.assert_close(batch.guide["negatives"], torch.from_numpy(store.get(np.array(negatives))).half())
    # the batch planner sees each row's query, positive and negatives, one small int for each distinct text
    rows_ids = table.select("query_id", "positive_id", "negative_ids").iter_rows()
    values, counts, _ = data.plan_rows.texts_and_tasks(np.arange(len(data)))
    texts = row_texts(values, counts)
    seen = {(int(small), text_id) for r, (q, p, n) in enumerate(rows_ids)
            for small, text_id in zip(texts.row(r), [q, p, *n[:2]], strict=True)}
    assert len({small for small, _ in seen}) == len({text_id for _, text_id in seen}) == len(seen) == texts.n_texts


def test_report_renders_and_links_only_existing_files(mined_work, tiny_model, tmp_path):
    import re

    from pipeline import report

    work = tmp_path / "w"
    shutil.copytree(mined_work / "w", work)
    assert run_stage(train_command, "--work", work, "--out", work / "models" / "gist", "--student", tiny_model, "--max-steps", 3,
                     *COMMON) == 0
    assert run_stage(report, "--work", work) == 0
    page = (work / "report" / "index.html").read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert {"scores.png", "per_task.png", "negatives_found.png", "training.png"} <= set(sources)
    assert all((work / "report" / s).stat().st_size > 1000 for s in sources)
    assert page.count("class=example") > 0 and "false negatives (masked)" in page


@pytest.mark.slow
def test_torchrun_two_gloo_processes_equal_one_process(mined_work, tmp_path):
    """2 ranks x 4 anchors follow the same losses as 1 process x 8: gathered candidates, averaged
    gradients, with ranks holding different numbers of mined negatives."""
    import os
    import socket
    import subprocess
    import sys

    from conftest import ROOT, build_tiny_model

    student = build_tiny_model(tmp_path / "student", seed=4, dropout=0.0)  # no dropout: the same forward either way
    common = ["--work", mined_work / "w", "--student", student, "--max-steps", 3, "--lr", 1e-3, "--temperature", 0.05,
              "--negatives-in-batch", 2]
    assert run_stage(train_command, *common, "--batch-size", 8, "--out", tmp_path / "one") == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # two ranks, and two ranks with GradCache mini-batches (no_sync on all but the last backward)
    for out, extra in (("two", []), ("two-cached", ["--mini-batch-size", "3"])):
        with socket.socket() as free:  # a port nobody holds, so that runs beside this one cannot collide
            free.bind(("127.0.0.1", 0))
            port = str(free.getsockname()[1])
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                               port, "-m", "train.run", *map(str, common), "--batch-size", "4", "--out",
                               str(tmp_path / out), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-6000:]
    one, two, cached = metrics(tmp_path / "one"), metrics(tmp_path / "two"), metrics(tmp_path / "two-cached")
    assert [m["anchors"] for m in one] == [8, 8, 8] and [m["anchors"] for m in two] == [4, 4, 4]
    assert any(2 * b["negatives"] != a["negatives"] for a, b in zip(one, two))  # rank 0's share differs from rank 1's
    for a, b, c in zip(one, two, cached):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4) and c["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["masked_fraction"] == pytest.approx(a["masked_fraction"], abs=1e-3)


@pytest.mark.parametrize("strategy, margin", [("absolute", 0.0), ("absolute", 0.1), ("relative", 0.05)])
def test_grad_cache_equals_the_uncached_loss_and_gradients(mined_work, tmp_path, strategy, margin):
    """With dropout on: the cached step must replay each mini-batch's dropout, so its gradients equal those of
    one graph over the same mini-batches; and with dropout off they equal the plain single forward's."""
    from conftest import build_tiny_model

    from gist_mining.models import load_model

    data = TrainingData(mined_work / "w", 2, "cpu")
    batch = data.get_batch(list(range(12)))
    assert batch.known.ne(-1).any()  # known false negatives take part
    texts = [t for c in COLUMNS for t in batch.texts[c]]
    sizes = [len(batch.texts[c]) for c in COLUMNS]
    loss_fn = GISTLoss(0.05, strategy, margin)
    for dropout in (0.1, 0.0):
        model = load_model(str(build_tiny_model(tmp_path / f"m{dropout}", seed=5, dropout=dropout)), device="cpu")
        model.train()

        def grads_of(step) -> tuple[float, list[torch.Tensor]]:
            model.zero_grad()
            torch.manual_seed(11)
            loss = step()
            return loss, [p.grad.clone() for p in model.parameters() if p.grad is not None]

        def one_graph():
            # the cached step's mini-batches: 5 texts at a time within each column (the model has no prompts)
            chunks = [student_forward(model, batch.texts[c][s: s + 5], "cpu", False, "")
                      for c in COLUMNS for s in range(0, len(batch.texts[c]), 5)]
            whole = torch.cat(chunks) if dropout else student_forward(model, texts, "cpu", False, "")
            loss = loss_fn(batch.with_student(dict(zip(COLUMNS, whole.split(sizes)))))[0]
            loss.backward()
            return loss.item()

        config = TrainConfig(mini_batch_size=5)
        expected = grads_of(one_graph)
        cached = grads_of(lambda: cached_backward(model, loss_fn, batch, "cpu", config.mini_batch_size)[0].item())
        assert cached[0] == pytest.approx(expected[0], rel=1e-5)
        assert len(cached[1]) == len(expected[1]) > 10
        for mine, theirs in zip(cached[1], expected[1]):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
