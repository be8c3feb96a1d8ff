"""The guide as teacher beyond the pairs (#35): the work directory's texts as distillation rows (--distill-corpus) and a
cross-encoder's stored scores as MarginMSE's soft labels (--distill-margin-mse), as train.run and the stock trainer
read them; the loss itself against the numpy oracle: tests/test_distill.py."""

from __future__ import annotations

import shutil

import numpy as np
import polars as pl
import pytest
import torch
from conftest import build_tiny_cross_encoder, gist_loss, make_pairs, run_stage
from test_distill import (
    grad_cache_equals_plain,
    narrow_student,  # noqa: F401  (the module fixture: a 24-dimensional student against the 32-dimensional guide)
    st_and_train_run,
)
from test_train import COMMON, metrics
from test_train_resume import same_weights

from gist_mining import workdir
from gist_mining.distill import Distillation
from gist_mining.errors import UsageError
from gist_mining.training.checkpoints import differences, run_identity
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import TrainingData
from gist_mining.training.loop import epoch_batches
from gist_mining.training.step import student_forward
from gist_mining.training.teacher_data import CorpusSample
from pipeline import embed, mask
from train import run as train_command


@pytest.fixture(scope="module")
def rescored(tmp_path_factory, tiny_guide):
    """64 pairs embedded by the tiny guide, candidates rescored by a tiny random cross-encoder and mined with its
    scores (--score rescore): mined/ holds the cross-encoder's score of each positive and negative."""
    root = tmp_path_factory.mktemp("teacher")
    make_pairs(64, seed=2).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    cross_encoder = build_tiny_cross_encoder(root / "ce", seed=3)
    assert run_stage(mask, "--work", root / "w", "--k", 20, "--negatives-per-anchor", 2, "--margin", -0.2,
                     "--rescore-model", cross_encoder, "--score", "rescore") == 0
    return root / "w"


def test_the_corpus_sample_is_a_function_of_seed_step_and_rank(rescored):
    """Drawn again each step, the same for the same (seed, step, rank); every text of texts.parquet can be drawn
    (not only the mined rows'); the texts and vectors are the stored ones."""
    texts = pl.read_parquet(rescored / workdir.TEXTS)
    ids, vectors = workdir.load_embeddings(rescored, "document")
    stored = dict(zip(ids.tolist(), vectors))
    sample = CorpusSample(rescored, 7, seed=3, device="cpu")
    draws = {(step, rank): sample.rows(step, rank) for step in range(1, 40) for rank in (0, 1)}
    assert all(len(set(rows.tolist())) == 7 for rows in draws.values())
    assert np.array_equal(CorpusSample(rescored, 7, seed=3, device="cpu").rows(5, 1), draws[5, 1])
    assert len({rows.tobytes() for rows in draws.values()}) == len(draws)
    assert not np.array_equal(CorpusSample(rescored, 7, seed=4, device="cpu").rows(5, 1), draws[5, 1])
    assert len(np.unique(np.concatenate(list(draws.values())))) > 0.9 * len(texts)  # the whole pool is drawn
    got, guide, got_ids = sample.read(5, 1)
    assert got == texts["text"].gather(draws[5, 1]).to_list()
    assert got_ids.tolist() == texts["text_id"].gather(draws[5, 1]).to_list()
    expected = np.stack([stored[i] for i in got_ids.tolist()])
    torch.testing.assert_close(guide, torch.from_numpy(expected).half())


@pytest.fixture(scope="module")
def guide_mined(rescored, tmp_path_factory):
    """The same rescored candidates, mined with the guide's scores (the default rule): mined/ holds the guide's
    scores, candidates/ still the cross-encoder's."""
    work = tmp_path_factory.mktemp("guide-mined") / "w"
    shutil.copytree(rescored, work)
    assert run_stage(mask, "--work", work, "--refilter", "--score", "guide", "--negatives-per-anchor", 2) == 0
    return work


def cross_encoder_scores_by_hand(work) -> dict:
    """(anchor_id, text_id) -> the cross-encoder's score, from candidates/ entry by entry; (anchor_id, None): the
    positive's."""
    found = {}
    for row in pl.read_parquet(work / "candidates" / "*.parquet").iter_rows(named=True):
        found[row["anchor_id"], None] = row["rescore_positive_score"]
        for ids, scores in (("candidate_ids", "rescore_candidate_scores"), ("given_negative_ids",
                                                                             "rescore_given_negative_scores")):
            found.update({(row["anchor_id"], i): score for i, score in zip(row[ids], row[scores])})
    return found


@pytest.mark.parametrize("mined_with", ["rescore", "guide"])
def test_cross_encoder_margins_are_the_stored_scores(rescored, guide_mined, mined_with):
    """Each negative's margin: the cross-encoder's score of the positive less its score of the negative, as
    candidates/ stored them (mined/ holds the same scores when mined with them), owned by its row; a known false
    negative the batch brings in has none."""
    from gist_mining.training.teacher_data import CrossEncoderMargins

    work = {"rescore": rescored, "guide": guide_mined}[mined_with]
    data = TrainingData(work, 2, "cpu", false_negatives=1)
    margins = CrossEncoderMargins(work, data.manifest, data.rows.every("anchor_id")[0], 2)
    by_hand = cross_encoder_scores_by_hand(work)
    mined = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")
    counts = {name: mined[name].list.len().to_numpy() for name in ("negative_ids", "false_negative_ids")}
    with_fn = np.flatnonzero((counts["false_negative_ids"] > 0) & (counts["negative_ids"] > 0))
    with_negatives = np.flatnonzero(counts["negative_ids"] > 0)
    # in no order; rows with a known false negative among them
    rows = [int(with_fn[-1]), int(with_negatives[0]), int(with_fn[0]), int(with_negatives[1]), 0]
    lengths = data.rows.read(rows)["n_documents"]
    labels = margins.soft_labels(rows, lengths, "cpu")
    expected_owner, expected = [], []
    for i, r in enumerate(rows):
        row = mined.row(r, named=True)
        scored = [by_hand[row["anchor_id"], None] - by_hand[row["anchor_id"], i] for i in row["negative_ids"][:2]]
        expected_owner += [i] * lengths[i]
        expected += scored + [float("nan")] * (lengths[i] - len(scored))
    assert labels.owner.tolist() == expected_owner
    np.testing.assert_allclose(labels.margins.numpy(), np.array(expected, np.float32), rtol=1e-6)
    assert np.isnan(labels.margins.numpy()).any() and (~np.isnan(labels.margins.numpy())).sum() >= 4
    if mined_with == "rescore":  # mined/'s own scores are the cross-encoder's
        assert [row["negative_scores"][:2] for row in mined.iter_rows(named=True)] == [
            [by_hand[row["anchor_id"], i] for i in row["negative_ids"][:2]] for row in mined.iter_rows(named=True)]


def test_new_options_at_their_defaults_leave_the_run_identity_alone():
    """Runs checkpointed before --distill-corpus and --distill-margin-mse existed resume: at their defaults the two
    are not in the identity; set, they are, and a change is named."""
    default = run_identity(TrainConfig(), "a")
    assert not {"distill_corpus", "distill_margin_mse"} & default["settings"].keys()
    corpus = run_identity(TrainConfig(distill="scores", distill_corpus=8), "a")
    assert corpus["settings"]["distill_corpus"] == 8
    assert differences(corpus, run_identity(TrainConfig(distill="scores", distill_corpus=4), "a")) == [
        "--distill-corpus (8 there, 4 now)"]


TEACHER = ["--distill", "scores", "--distill-weight", "0.5", "--distill-temperature", "0.02", "--distill-corpus", "5",
           "--distill-margin-mse", "2"]


def test_the_trainers_first_step_is_the_loss_of_its_batch_with_corpus_and_margins(rescored, narrow_student,  # noqa: F811
                                                                                   tmp_path):
    """train.run's first logged loss is GISTLoss's on the first batch of the seed's plan, with step 1's corpus texts
    and the batch's margins (the student, without dropout, before its first update)."""
    from gist_mining.models import load_model
    from gist_mining.training.teacher_data import Teacher

    assert run_stage(train_command, "--work", rescored, "--student", narrow_student, "--max-steps", 1, *COMMON,
                     *TEACHER, "--out", tmp_path / "run") == 0
    data = TrainingData(rescored, 1, "cpu")
    d = Distillation("scores", 0.5, 0.02, corpus=5, margin_mse=2.0)
    rows = epoch_batches(data, TrainConfig(batch_size=8, seed=3), 1, 0)[0]
    batch = Teacher(rescored, d, data.manifest, data.rows, 1, 3, "cpu").add(data.get_batch(rows), rows, (1, 0))
    assert len(batch.texts["corpus"]) == 5 and not batch.soft_labels.margins.isnan().all()
    model = load_model(str(narrow_student), device="cpu")
    student = {c: student_forward(model, batch.texts[c], "cpu", False, "") for c in batch.columns}
    expected = gist_loss(temperature=0.05, distill=d)(batch.with_student(student))[0].item()
    without = gist_loss(temperature=0.05, distill=Distillation("scores", 0.5, 0.02))(batch.with_student(student))[0]
    assert metrics(tmp_path / "run")[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(without.item(), rel=1e-4)  # the corpus and the margins count


def test_resumed_run_with_corpus_and_margins_equals_the_uninterrupted_one(rescored, narrow_student, tmp_path):  # noqa: F811
    """Killed after step 2 of 4: the rerun draws the corpus texts the uninterrupted run drew (a function of the seed
    and the step), so the losses and the final weights are the same bit for bit."""
    args = ["--work", rescored, "--student", narrow_student, "--max-steps", 4, "--save-steps", 2, *COMMON,
            "--distill", "scores+embeddings", "--distill-corpus", "3", "--distill-margin-mse", "1"]
    assert run_stage(train_command, *args, "--out", tmp_path / "whole") == 0
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-0000002", cut / "checkpoints" / "step-0000002")
    assert run_stage(train_command, *args, "--out", cut) == 0
    whole = [{k: v for k, v in m.items() if k != "seconds"} for m in metrics(tmp_path / "whole")]
    assert [{k: v for k, v in m.items() if k != "seconds"} for m in metrics(cut)] == whole[2:]
    assert same_weights(cut, tmp_path / "whole")


@pytest.mark.slow  # 10 s; the loss by rows with both is in tests/test_distill.py's fast tier
def test_grad_cache_step_with_corpus_and_margins_equals_the_plain_step(rescored, narrow_student):  # noqa: F811
    grad_cache_equals_plain(rescored, narrow_student, Distillation("scores+embeddings", 0.5, 0.02, "teacher", corpus=4,
                                                                  margin_mse=2.0))


def test_margin_mse_is_refused_without_cross_encoder_scores(tmp_path, tiny_guide):
    """Searched without a cross-encoder, no table holds its scores: the stock loss's constructor says so."""
    from test_st import load

    from gist_mining.st import StoredGuideGISTLoss

    root = tmp_path
    make_pairs(24, seed=1).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    assert run_stage(mask, "--work", root / "w", "--k", 10) == 0
    with pytest.raises(UsageError, match="hold no cross-encoder's scores"):
        StoredGuideGISTLoss(load(tiny_guide), root / "w", distill=Distillation(margin_mse=1.0))


ST_CASES = {"corpus-scores": Distillation("scores", 0.5, 0.02, "teacher", corpus=5),
            "corpus-embeddings+margins": Distillation("embeddings", 0.5, corpus=4, margin_mse=2.0)}


@pytest.mark.parametrize("name", list(ST_CASES))
def test_stock_trainers_loss_equals_train_runs(rescored, narrow_student, name):  # noqa: F811
    """StoredGuideGISTLoss with corpus rows and margins: train.run's loss and gradients on the same anchors with the
    same draw of corpus texts (seed 42, train.run's default; rank 0 and the batch's anchors) and margins; GradCache
    too."""
    from test_st import assert_same, load

    from gist_mining.st import mined_dataset

    model = load(narrow_student)
    model.eval()
    rows = mined_dataset(rescored, 1, short="drop").select(range(12))
    stored, expected, _ = st_and_train_run(rescored, model, rows, ST_CASES[name])
    assert_same(stored, expected)
    cached, expected = st_and_train_run(rescored, model, rows, ST_CASES[name], mini_batch_size=3)[:2]
    assert cached[0] == pytest.approx(expected[0], rel=1e-5)
    for mine, theirs in zip(cached[1], expected[1], strict=True):  # chunks add up in another order: float32 noise
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)


def test_stock_trainer_trains_with_corpus_rows_and_margins(rescored, tiny_model, tmp_path):
    from sentence_transformers import SentenceTransformerTrainer
    from test_st import load, train_args

    from gist_mining.st import StoredGuideGISTLoss, mined_dataset

    model = load(tiny_model)
    loss = StoredGuideGISTLoss(model, rescored, distill=Distillation("scores+embeddings", corpus=4, margin_mse=1.0))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = SentenceTransformerTrainer(model=model, args=train_args(tmp_path, report_to="none"),
                                         train_dataset=mined_dataset(rescored, 1), loss=loss)
    trainer.train()
    assert all(np.isfinite(h["loss"]) and h["loss"] > 0 for h in trainer.state.log_history if "loss" in h)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_matryoshka_sees_one_corpus_draw_per_batch(rescored, tiny_model):
    """MatryoshkaLoss calls the loss once per size on one batch (reusing the first call's forward passes, the loss's
    own corpus pass too): each call must draw the same corpus texts, so the wrapped loss is the sum over the sizes
    of the loss on the cut embeddings, computed by hand; another batch draws other texts."""
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss
    from test_st import collate, fresh, grads_of, load

    from gist_mining.st import StoredGuideGISTLoss, mined_dataset

    model = load(tiny_model)
    model.eval()
    features, labels = collate(model, mined_dataset(rescored, 1, short="drop").select(range(10)))
    loss = StoredGuideGISTLoss(model, rescored, distill=Distillation("scores", corpus=6, margin_mse=1.0))

    def by_hand():
        full = [model(f)["sentence_embedding"] for f in fresh(features)]
        return sum(loss.calculate_loss([[e[:, :dim]] for e in full], labels) for dim in (32, 16, 8))

    wrapped = MatryoshkaLoss(model, loss, [32, 16, 8])
    got, expected = grads_of(model, lambda: wrapped(fresh(features), labels)), grads_of(model, by_hand)
    assert got[0] == pytest.approx(expected[0], rel=1e-5)
    for mine, theirs in zip(got[1], expected[1], strict=True):  # the sizes add up in another order: float32 noise
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    draw = loss.teacher.corpus.rows(0, *labels[:, 0].numpy().astype(np.uint64).tolist())
    assert not np.array_equal(draw, loss.teacher.corpus.rows(0, *labels[1:, 0].numpy().astype(np.uint64).tolist()))
