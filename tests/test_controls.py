"""The in-batch mask controls (random, hardest) and the unjudged-anchor exemption, against numpy oracles."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import gist_loss, run_stage
from test_train import COMMON, metrics, mined_work  # noqa: F401  (the module's mined work directory fixture)

from gist_mining.lists import PAD_ID
from gist_mining.loss import Column, GuidedBatch, same_count
from gist_mining.training.data import COLUMNS, TrainingData
from pipeline import mask
from train import run as train_command


def random_mask_inputs(seed: int, rows: int = 7, cols: int = 40):
    g = torch.Generator().manual_seed(seed)
    eligible = torch.rand(rows, cols, generator=g) < 0.8
    chosen = torch.rand(rows, cols, generator=g) < 0.3
    return chosen, eligible, torch.randn(rows, cols, generator=g)


def test_same_count_keeps_each_rows_count_and_stays_eligible():
    chosen, eligible, logits = random_mask_inputs(0)
    for how in ("random", "hardest"):
        out = same_count(chosen, eligible, logits, how)
        assert torch.equal(out.sum(1), (chosen & eligible).sum(1))
        assert not (out & ~eligible).any()


def test_random_is_seeded_by_torch():
    chosen, eligible, logits = random_mask_inputs(1)
    draws = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        draws.append(same_count(chosen, eligible, logits, "random"))
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_hardest_takes_the_highest_student_scores():
    chosen, eligible, logits = random_mask_inputs(2)
    out = same_count(chosen, eligible, logits, "hardest").numpy()
    scores, ok, count = logits.numpy(), eligible.numpy(), (chosen & eligible).sum(1).numpy()
    for row in range(len(scores)):
        candidates = np.flatnonzero(ok[row])
        top = candidates[np.argsort(-scores[row, candidates])[: count[row]]]
        assert set(np.flatnonzero(out[row])) == set(top.tolist())


def batch_of(seed: int, b: int = 6, m: int = 4, unjudged=None) -> GuidedBatch:
    """Random student and guide vectors; ids distinct but for one negative that repeats anchor 1's positive."""
    g = torch.Generator().manual_seed(seed)
    vec = lambda n, d: F.normalize(torch.randn(n, d, generator=g), dim=-1)  # noqa: E731
    p_ids = torch.arange(100, 100 + b)
    n_ids = torch.arange(200, 200 + m)
    n_ids[0] = p_ids[1]
    return GuidedBatch(Column(vec(b, 8), vec(b, 5), torch.arange(b)), Column(vec(b, 8), vec(b, 5), p_ids),
                       Column(vec(m, 8), vec(m, 5), n_ids), torch.full((b, 0), PAD_ID), unjudged)


def oracle_hardest(batch: GuidedBatch, temperature: float) -> float:
    """The loss with, per anchor, as many of its highest-scored eligible logits masked as the guide masks."""
    q, p, n = (c.student_vectors.double().numpy() for c in (batch.queries, batch.positives, batch.negatives))
    gq, gp, gn = (c.guide_vectors.double().numpy() for c in (batch.queries, batch.positives, batch.negatives))
    ids = np.concatenate([batch.positives.ids, batch.negatives.ids, batch.queries.ids, batch.positives.ids])
    logits = np.concatenate([q @ p.T, q @ n.T, q @ q.T, p @ p.T], axis=1)
    guide = np.concatenate([gq @ gp.T, gq @ gn.T, gq @ gq.T, gp @ gp.T], axis=1)
    total = 0.0
    for i in range(len(q)):
        always = (ids == batch.queries.ids[i].item()) | (ids == batch.positives.ids[i].item())
        eligible = ~always
        eligible[i] = False  # the label
        count = (eligible & (guide[i] > (gq[i] @ gp[i]))).sum()
        candidates = np.flatnonzero(eligible)
        masked = always.copy()
        masked[candidates[np.argsort(-logits[i, candidates])[:count]]] = True
        masked[i] = False
        row = logits[i, ~masked] / temperature
        total += np.log(np.exp(row - row.max()).sum()) + row.max() - logits[i, i] / temperature
    return total / len(q)


def test_controls_in_the_loss_mask_as_much_as_the_guide():
    batch = batch_of(3)
    _, guided = gist_loss(temperature=0.1)(batch)
    torch.manual_seed(0)
    _, random_fraction = gist_loss(temperature=0.1, control="random")(batch)
    hardest_loss, hardest_fraction = gist_loss(temperature=0.1, control="hardest")(batch)
    assert random_fraction.item() == guided.item() == hardest_fraction.item() > 2 / 22
    assert hardest_loss.item() == pytest.approx(oracle_hardest(batch, 0.1), rel=1e-5)


def test_unjudged_anchors_get_only_the_self_pair_masks():
    plain = gist_loss(guided=False)(batch_of(4))
    all_out = gist_loss()(batch_of(4, unjudged=torch.ones(6, dtype=torch.bool)))
    none_out = gist_loss()(batch_of(4, unjudged=torch.zeros(6, dtype=torch.bool)))
    default = gist_loss()(batch_of(4))
    assert [x.item() for x in all_out] == [x.item() for x in plain]
    assert [x.item() for x in none_out] == [x.item() for x in default]
    assert default[1].item() > plain[1].item()


def test_trainer_controls_mask_as_many_logits_as_the_guide(mined_work, tiny_model, tmp_path):  # noqa: F811
    base = ["--work", mined_work / "w", "--student", tiny_model, "--max-steps", 3, *COMMON]
    fractions = {}
    for name in ("precomputed", "random", "hardest"):
        assert run_stage(train_command, *base, "--out", tmp_path / name, "--guide-filter", name) == 0
        fractions[name] = [m["masked_fraction"] for m in metrics(tmp_path / name)]
    assert fractions["random"] == fractions["precomputed"] == fractions["hardest"]


def test_trainer_exempts_the_anchors_mining_exempted(mined_work, tiny_model, tmp_path):  # noqa: F811
    """Mined with --unjudged-rank-min, the trainer leaves those anchors out of its in-batch rule too."""
    import shutil

    work = tmp_path / "w"
    shutil.copytree(mined_work / "w", work)
    assert run_stage(mask, "--work", work, "--refilter", "--unjudged-rank-min", 2) == 0
    data = TrainingData(work, 1, "cpu")
    candidates = pl.read_parquet(work / "candidates" / "*.parquet").sort("anchor_id")
    above = [sum(s > p for s in scores) for scores, p in zip(candidates["candidate_scores"], candidates["positive_score"])]
    expected = np.array([2 * a > len(c) for a, c in zip(above, candidates["candidate_ids"])])
    assert 0 < expected.sum() < len(expected) and np.array_equal(data.rows.every("unjudged")[0] == 1, expected)
    rows = list(range(16))
    batch = data.get_batch(rows)
    student = {c: batch.guide[c].float() for c in COLUMNS}  # any vectors will do
    exempt = batch.with_student(student)
    assert torch.equal(exempt.unjudged, torch.from_numpy(expected[rows]))
    assert TrainingData(mined_work / "w", 1, "cpu").get_batch(rows).unjudged is None
