"""The guided loss: hand-built masks, equivalence with sentence-transformers' GISTEmbedLoss, DDP gathering."""

from __future__ import annotations

import os
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import gist_loss, sentence

from gist_mining.lists import PAD_ID
from gist_mining.loss import Column, GuidedBatch, LossRules
from gist_mining.workdir import text_ids


def loss_of(q, p, n, gq, gp, gn, q_ids, p_ids, n_ids, known=None, unjudged=None, rows=None, **settings):
    """The loss and masked fraction for one batch given column by column; with ``rows``, from
    GISTLoss.backward_by_rows in chunks of that many anchors (gradients already pushed back)."""
    known = torch.full((len(q_ids), 0), PAD_ID) if known is None else known
    batch = GuidedBatch(Column(q, gq, q_ids), Column(p, gp, p_ids), Column(n, gn, n_ids), known, unjudged)
    loss = gist_loss(**settings)
    return loss(batch) if rows is None else loss.backward_by_rows(batch, rows)


def unit(*rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_hand_built_mask():
    """Anchor 0's guide rates anchor 1's positive above its own positive: that entry is masked, and so on."""
    q = unit([1, 0, 0], [0, 1, 0])
    p = unit([1, 0.1, 0], [0.1, 1, 0])
    gq = unit([1, 0, 0], [0, 1, 0])
    gp = unit([1, 1, 0], [1, 0, 0])  # guide q.p: row 0 -> [0.71, 1.0], row 1 -> [0.71, 0.0]
    empty = torch.zeros((0, 3))
    loss, _ = loss_of(q, p, empty, gq, gp, empty, torch.tensor([1, 2]), torch.tensor([3, 4]),
                      torch.zeros(0, dtype=torch.long), temperature=1.0)
    s = lambda a, b: float(a.double() @ b.double())  # noqa: E731
    # row 0 (threshold 0.71): q0.p1 (1.0) masked; q0.q1 (0) kept; p0.p1 (guide 0.71, not above) kept
    row0 = torch.tensor([s(q[0], p[0]), s(q[0], q[1]), s(p[0], p[1])], dtype=torch.float64)
    # row 1 (threshold 0.0): q1.p0 (0.71) masked; q1.q0 (0) kept; p1.p0 (guide 0.71) masked
    row1 = torch.tensor([s(q[1], p[1]), s(q[1], q[0])], dtype=torch.float64)
    expected = (torch.logsumexp(row0, 0) - row0[0] + torch.logsumexp(row1, 0) - row1[0]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_margin_and_negative_threshold():
    q, p, n = unit([1, 0]), unit([1, 0]), unit([0.6, 0.8], [0.8, 0.6])
    gq, gp = unit([1, 0]), unit([-0.2, 0.98])  # guide's positive score is negative: -0.2
    gn = unit([-0.25, 0.97], [-0.1, 0.99])  # guide scores -0.25 and -0.1
    args = (q, p, n, gq, gp, gn, torch.tensor([1]), torch.tensor([2]), torch.tensor([3, 4]), None)
    _, absolute = loss_of(*args, margin_strategy="absolute", margin=0.0)
    _, relative = loss_of(*args, margin_strategy="relative", margin=0.5)
    _, none = loss_of(*args, guided=False)
    # 5 columns [p | n n | q | p]: self q-q and p-p always masked; -0.1 is above -0.2; -0.25 only above -0.3
    assert absolute.item() == pytest.approx(3 / 5)
    assert relative.item() == pytest.approx(4 / 5)
    assert none.item() == pytest.approx(2 / 5)


def test_known_false_negatives_and_duplicates_are_masked():
    q, p = unit([1, 0], [0, 1]), unit([1, 0.1], [0.1, 1])
    n = unit([0.9, 0.1], [0.5, 0.5])
    ids = torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([4, 9])  # n_0 is p_1's text
    known = torch.tensor([[9, PAD_ID], [PAD_ID, PAD_ID]])
    guide = (unit([1, 0], [0, 1]), unit([1, 0], [0, 1]), unit([0, 1], [0, 1]))
    _, with_known = loss_of(q, p, n, *guide, *ids, known, margin_strategy="none")
    _, without = loss_of(q, p, n, *guide, *ids, None, margin_strategy="none")
    # 2 rows x 8 columns [p p | n n | q q | p p]: self q-q, p-p (2 per row); row 1's positive text as n_0 (1)
    assert without.item() == pytest.approx(5 / 16)
    assert with_known.item() == pytest.approx(6 / 16)  # plus n_1 for anchor 0


@pytest.mark.parametrize("strategy, margin", [("absolute", 0.0), ("absolute", 0.1), ("relative", 0.05)])
def test_equals_sentence_transformers_gist_embed_loss(tiny_model, tiny_guide, strategy, margin):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss

    rng = random.Random(7)
    columns = [[sentence(rng) for _ in range(8)] for _ in range(3)]  # anchors, positives, negatives
    model = SentenceTransformer(str(tiny_model), device="cpu")
    guide = SentenceTransformer(str(tiny_guide), device="cpu")
    model.eval()  # no dropout: both losses see the same student embeddings

    reference = GISTEmbedLoss(model, guide, temperature=0.05, margin_strategy=strategy, margin=margin)
    features = [model.preprocess(texts) for texts in columns]
    expected = reference(features, labels=None)
    expected.backward()
    expected_grads = [None if w.grad is None else w.grad.clone() for w in model.parameters()]
    assert sum(g is not None for g in expected_grads) > 10
    model.zero_grad()

    embeddings = [model(model.preprocess(texts))["sentence_embedding"] for texts in columns]
    guide_embeddings = [torch.from_numpy(guide.encode(texts, normalize_embeddings=True)) for texts in columns]
    ids = [torch.from_numpy(text_ids(texts)) for texts in columns]
    ours, _ = loss_of(*embeddings, *guide_embeddings, *ids, None, temperature=0.05, margin_strategy=strategy,
                      margin=margin)
    ours.backward()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-6)
    for mine, theirs in zip((w.grad for w in model.parameters()), expected_grads):
        assert (mine is None) == (theirs is None)
        if theirs is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def random_inputs(seed: int = 0) -> dict:
    """8 anchors and 8 negatives: known false negatives, anchors the guide cannot judge, and a negative that is
    another anchor's positive text (a duplicate, always masked)."""
    g = torch.Generator().manual_seed(seed)
    inputs = {k: F.normalize(torch.randn(8, 16, generator=g), dim=-1) for k in ("q", "p", "n", "gq", "gp", "gn")}
    inputs.update(q_ids=torch.arange(8), p_ids=torch.arange(8) + 100, n_ids=torch.arange(8) + 200,
                  known=torch.tensor([[201, 205]] * 4 + [[203, PAD_ID]] * 4),
                  unjudged=torch.tensor([False, False, True, False, False, False, True, False]))
    inputs["n_ids"][6] = 102
    return inputs


def with_grads(inputs: dict, rows: int | None = None, **settings) -> tuple[float, float, list[torch.Tensor]]:
    """The loss, masked fraction and gradients of the student columns q, p, n, one pass or by rows."""
    leaves = [inputs[k].clone().requires_grad_() for k in ("q", "p", "n")]
    loss, masked = loss_of(*leaves, *(inputs[k] for k in ("gq", "gp", "gn", "q_ids", "p_ids", "n_ids", "known")),
                           unjudged=inputs["unjudged"], rows=rows, **settings)
    if rows is None:
        loss.backward()
    return loss.item(), masked.item(), [leaf.grad for leaf in leaves]


# The later rules (LossRules, issue #26), each alone and all together; tests/test_loss_rules.py checks them
# against a numpy oracle, the tests here by rows and across processes.
RULES = {"self": dict(guided=False, rules=LossRules(self_filter=True)),
         "guide+self": dict(rules=LossRules(self_filter=True, self_margin=0.05)),
         "hardness-all": dict(rules=LossRules(hardness_strength=5.0)),
         "hardness-in-batch": dict(guided=False, rules=LossRules(hardness_strength=9.0, hardness_negatives="in-batch")),
         "hardness-mined": dict(rules=LossRules(hardness_strength=5.0, hardness_negatives="mined")),
         "positives": dict(rules=LossRules(false_negatives="positives")),
         "suspect-weight": dict(rules=LossRules(suspect_weight=0.3)),
         "all": dict(margin_strategy="relative", margin=0.05,
                     rules=LossRules(self_filter=True, hardness_strength=5.0, hardness_negatives="mined",
                                     false_negatives="positives", promote_margin=0.02, suspect_weight=0.5))}


@pytest.mark.parametrize("settings", [dict(margin_strategy="absolute", margin=0.0), dict(margin_strategy="absolute", margin=0.1),
                                      dict(margin_strategy="relative", margin=0.05), dict(control="hardest"),
                                      dict(guided=False), *RULES.values()],
                         ids=["absolute", "absolute-0.1", "relative", "hardest", "unguided", *RULES])
def test_loss_by_rows_equals_one_pass(settings):
    """GradCache's memory-bounded loss: chunks of anchors give the loss, masks and gradients of one pass."""
    inputs = random_inputs()
    for unjudged in (inputs["unjudged"], None):
        inputs["unjudged"] = unjudged
        loss, masked, grads = with_grads(inputs, temperature=0.05, **settings)
        for rows in (1, 3, 8):
            by_rows = with_grads(inputs, rows, temperature=0.05, **settings)
            assert by_rows[0] == pytest.approx(loss, rel=1e-5) and by_rows[1] == pytest.approx(masked, abs=1e-6)
            for mine, theirs in zip(by_rows[2], grads):
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


# Unequal shares, as in a short last batch or anchors with fewer mined negatives: rank 0 holds 3 anchors
# and 5 negatives, rank 1 holds 5 anchors and 3 negatives; by rows of 2 anchors, 2 chunks against 3.
ANCHOR_SPLIT, NEGATIVE_SPLIT = (0, 3, 8), (0, 5, 8)


# The settings run under two processes: GISTEmbed's loss, and each later rule (one spawn for all).
DDP_SETTINGS = {"gist": {}, **RULES}


def _ddp_worker(rank: int, world: int, port: int, inputs: dict, out: dict):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    share = {k: v[NEGATIVE_SPLIT[rank]: NEGATIVE_SPLIT[rank + 1]] if k in ("n", "gn", "n_ids")
             else v[ANCHOR_SPLIT[rank]: ANCHOR_SPLIT[rank + 1]] for k, v in inputs.items()}
    for name, settings in DDP_SETTINGS.items():
        out[name, rank] = with_grads(share, temperature=0.05, **settings)
        out[name, rank, "by rows"] = with_grads(share, 2, temperature=0.05, **settings)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_with_unequal_shares_equal_one_process():
    import socket

    import torch.multiprocessing as mp

    inputs = random_inputs()
    assert 0.2 < with_grads(inputs, temperature=0.05)[1] < 0.8  # the guide and the known false negatives have work to do
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, inputs, out), nprocs=2, join=True)
    # averaging over ranks, as DDP does, gives the global batch's loss and gradients; so does each rank by rows
    for name, settings in DDP_SETTINGS.items():
        single, _, grads = with_grads(inputs, temperature=0.05, **settings)
        for by_rows in ((), ("by rows",)):
            ranks = [out[(name, rank, *by_rows)] for rank in (0, 1)]
            assert (ranks[0][0] + ranks[1][0]) / 2 == pytest.approx(single, rel=1e-5), name
            for column, expected in enumerate(grads):
                torch.testing.assert_close(torch.cat([r[2][column] for r in ranks]) / 2, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_masks_and_loss_match_cpu():
    g = torch.Generator().manual_seed(1)
    data = {k: F.normalize(torch.randn(64, 384, generator=g), dim=-1) for k in ("q", "p", "n")}
    guide = {k: F.normalize(torch.randn(64, 768, generator=g), dim=-1) for k in ("gq", "gp", "gn")}
    ids = (torch.arange(64), torch.arange(64) + 100, torch.arange(64) + 200)
    known = torch.randint(0, 300, (64, 5), generator=g)
    args = dict(temperature=0.02, margin_strategy="relative", margin=0.05)
    cpu_loss, cpu_mask = loss_of(*data.values(), *guide.values(), *ids, known, **args)
    cuda = lambda x: x.cuda()  # noqa: E731
    gpu_loss, gpu_mask = loss_of(*map(cuda, data.values()), *map(cuda, guide.values()), *map(cuda, ids),
                                 known.cuda(), **args)
    assert gpu_mask.item() == cpu_mask.item()
    assert gpu_loss.item() == pytest.approx(cpu_loss.item(), rel=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16_loss, bf16_mask = loss_of(*map(cuda, data.values()), *map(cuda, guide.values()), *map(cuda, ids),
                                       known.cuda(), **args)
    assert bf16_mask.item() == cpu_mask.item()  # guide scores stay float32 under autocast
    assert bf16_loss.item() == pytest.approx(cpu_loss.item(), rel=0.05)


def test_known_false_negatives_per_row_equal_brute_force():
    from gist_mining.loss import _in_rows

    g = torch.Generator().manual_seed(3)
    known = torch.randint(0, 50, (16, 7), generator=g)
    known[::3, 4:] = PAD_ID
    candidates = torch.randint(0, 60, (40,), generator=g)
    expected = (candidates[None, :, None] == known[:, None, :]).any(-1)
    assert torch.equal(_in_rows(candidates, known), expected) and expected.any() and not expected.all()
