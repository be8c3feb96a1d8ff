"""The guide as teacher (gist_mining.distill, GISTLoss's ``distill``): score and embedding distillation, over the
batch's corpus texts too, and MarginMSE on a cross-encoder's margins, against a numpy oracle written from their
definitions, entry by entry; by rows (GradCache) and under two gloo processes, as the loss's other rules are checked;
the options of train.run. (tests/test_distill_teacher.py: the corpus rows and the margins as train.run and the stock
trainer read them.)"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import gist_loss, run_stage
from test_loss import ANCHOR_SPLIT, NEGATIVE_SPLIT, random_inputs
from test_loss_rules import numeric_gradients
from test_loss_rules import oracle as contrastive_oracle
from test_st import work  # noqa: F401  (the stock trainer tests' mined work directory fixture)
from test_train import COMMON, metrics, mined_work  # noqa: F401  (the module's mined work directory fixture)

from gist_mining.distill import DISTILL_MASKS, Distillation, SoftLabels
from gist_mining.lists import PAD_ID
from gist_mining.loss import Column, GuidedBatch
from gist_mining.margin import false_negative_threshold
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import COLUMNS, TrainingData
from gist_mining.training.loop import epoch_batches
from gist_mining.training.step import cached_backward, student_forward
from train import run as train_command

TEMPERATURE = 0.05
MAP_SEED = 11
# The corpus texts' split between the two gloo processes (beside test_loss's anchors' and negatives').
CORPUS_SPLIT = (0, 2, 6)


def columns_of(inputs: dict) -> tuple[str, ...]:
    """The student columns: queries, positives, negatives, and the corpus texts where the batch has them."""
    return ("q", "p", "n", "c") if "c" in inputs else ("q", "p", "n")


def with_teacher_rows(inputs: dict, seed: int = 0) -> dict:
    """random_inputs with 6 corpus texts (one is anchor 1's positive, one anchor 0-3's known false negative) and a
    cross-encoder's margin for each negative, owned by an anchor of the same gloo process (ANCHOR_SPLIT,
    NEGATIVE_SPLIT), one without a margin (NaN)."""
    g = torch.Generator().manual_seed(100 + seed)

    def unit(*shape):
        return torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)

    margins = torch.rand(8, generator=g) * 2 - 1
    margins[3] = float("nan")
    return dict(inputs, c=unit(6, 16), gc=unit(6, 16), c_ids=torch.tensor([300, 101, 302, 201, 304, 305]),
                owner=torch.tensor([0, 1, 1, 2, 2, 3, 4, 7]), margins=margins)


def student_units(inputs: dict) -> dict:
    vectors = {k: inputs[k].detach().double().numpy() for k in columns_of(inputs)}
    return {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vectors.items()}


def kl_oracle(inputs: dict, d: Distillation, guided: bool = True, judged_at: dict | None = None) -> float:
    """Mean over anchors of KL(teacher || student) over the anchor's entries, one entry at a time. The suspects
    (the guide's rule or mining's known false negatives, as GISTLoss judges them) are taken from ``judged_at``'s
    guide (held fixed for finite differences; the guide's vectors are constants anyway)."""
    student = student_units(inputs)
    guide = {k: inputs["g" + k].double().numpy() for k in columns_of(inputs)}
    ids = {k: inputs[f"{k}_ids"].tolist() for k in columns_of(inputs)}
    unjudged = [False] * len(ids["q"]) if inputs["unjudged"] is None else inputs["unjudged"].tolist()
    # The corpus texts: a fifth block, anchors' queries against them, where the loss is asked for them.
    blocks = [("q", "p"), ("q", "n"), ("q", "q"), ("p", "p")] + ([("q", "c")] if d.corpus and "c" in ids else [])
    total = 0.0
    for i in range(len(ids["q"])):
        known = {k for k in inputs["known"][i].tolist() if k != PAD_ID}
        threshold = false_negative_threshold(guide["q"][i] @ guide["p"][i], "absolute", 0.0)
        teacher, pupil = {}, {}  # entry -> logit, in each distribution's support
        for b, (row, column) in enumerate(blocks):
            for j, text in enumerate(ids[column]):
                label = b == 0 and j == i
                if not label and text in (ids["q"][i], ids["p"][i]):
                    continue  # the anchor's own texts: in neither
                suspect = (not label and guided and not unjudged[i]
                           and (guide[row][i] @ guide[column][j] > threshold or text in known))
                if not (suspect and d.mask in ("both", "teacher")):
                    teacher[b, j] = guide[row][i] @ guide[column][j] / d.temperature
                if not (suspect and d.mask in ("both", "student")):
                    pupil[b, j] = student[row][i] @ student[column][j] / TEMPERATURE
        log_t = {k: v - np.logaddexp.reduce(list(teacher.values())) for k, v in teacher.items()}
        log_s = {k: v - np.logaddexp.reduce(list(pupil.values())) for k, v in pupil.items()}
        total += sum(np.exp(log_t[k]) * (log_t[k] - log_s[k]) for k in log_t if k in log_s)
    return total / len(ids["q"])


def embedding_oracle(inputs: dict, weight: np.ndarray | None, corpus: bool = False) -> float:
    """Per anchor (the sum over all the batch's texts, its corpus texts with ``corpus``, over the number of anchors):
    1 - cos(W s, g)."""
    total = 0.0
    for k in ("q", "p", "n", "c") if corpus else ("q", "p", "n"):
        s = inputs[k].detach().double().numpy()
        mapped = s if weight is None else s @ weight.T
        g = inputs["g" + k].double().numpy()
        total += (1 - (mapped * g).sum(1) / np.linalg.norm(mapped, axis=1) / np.linalg.norm(g, axis=1)).sum()
    return total / len(inputs["q_ids"])


def margin_oracle(inputs: dict) -> float:
    """MarginMSE, per anchor: the sum over (anchor, its negative) with a margin of (s(q, p) - s(q, n) - margin)^2."""
    s = student_units(inputs)
    total = 0.0
    for j, (i, margin) in enumerate(zip(inputs["owner"].tolist(), inputs["margins"].tolist())):
        if not np.isnan(margin):
            total += (s["q"][i] @ s["p"][i] - s["q"][i] @ s["n"][j] - margin) ** 2
    return total / len(inputs["q_ids"])


def oracle(inputs: dict, d: Distillation, weight: np.ndarray | None, **settings) -> float:
    """The whole loss: the contrastive oracle's, plus each term ``d`` asks for."""
    return (contrastive_oracle(inputs, **settings)[0]
            + d.weight * ((kl_oracle(inputs, d, **settings) if d.scores else 0.0)
                          + (embedding_oracle(inputs, weight, bool(d.corpus)) if d.embeddings else 0.0))
            + d.margin_mse * (margin_oracle(inputs) if d.margin_mse else 0.0))


def distilled_loss(d: Distillation, guide_dim: int, **settings):
    loss = gist_loss(temperature=TEMPERATURE, distill=d, **settings)
    torch.manual_seed(MAP_SEED)  # the same map in every process
    loss.fit_embedding_map(16, guide_dim)
    return loss


def run(inputs: dict, d: Distillation, rows: int | None = None, device: str = "cpu", **settings):
    """The loss, and the gradients of q, p, n (and the corpus texts, c) and of the map's weight (None without one),
    one pass or by rows."""
    loss_fn = distilled_loss(d, inputs["gq"].shape[1], **settings).to(device)
    leaves = [inputs[k].clone().requires_grad_() for k in columns_of(inputs)]
    columns = [Column(leaf, inputs["g" + k], inputs[f"{k}_ids"]) for leaf, k in zip(leaves, "qpnc")]
    batch = GuidedBatch(*columns[:3], inputs["known"], inputs["unjudged"], corpus=columns[3] if len(columns) > 3 else None,
                        soft_labels=SoftLabels(inputs["owner"], inputs["margins"]) if "owner" in inputs else None)
    if rows is None:
        loss, _ = loss_fn(batch)
        loss.backward()
    else:
        loss, _ = loss_fn.backward_by_rows(batch, rows)
    linear = loss_fn.embedding_map.linear
    return loss.item(), [leaf.grad for leaf in leaves], None if linear is None else linear.weight.grad, linear


def with_guide_dim(inputs: dict, size: int) -> dict:
    """The guide's vectors in another size than the student's 16 (zero-padded: the same scores)."""
    return dict(inputs, **{"g" + k: torch.nn.functional.pad(inputs["g" + k], (0, size - inputs["g" + k].shape[1]))
                           for k in columns_of(inputs)})


def case_inputs(d: Distillation, size: int, seed: int = 0) -> dict:
    """random_inputs for a case: with the corpus texts and the margins where it uses them."""
    unused = ({"c", "gc", "c_ids"} if not d.corpus else set()) | ({"owner", "margins"} if not d.margin_mse else set())
    inputs = {k: v for k, v in with_teacher_rows(random_inputs(seed), seed).items() if k not in unused}
    return with_guide_dim(inputs, size)


# Each option alone and together; the guide 16-dimensional as the student (no map) or 24 (a map).
CASES = {f"scores-{mask}": (Distillation("scores", 0.7, 0.02, mask), 16) for mask in DISTILL_MASKS}
CASES.update({"embeddings-same-size": (Distillation("embeddings", 0.5), 16),
              "embeddings-mapped": (Distillation("embeddings", 0.5), 24),
              "both": (Distillation("scores+embeddings", 2.0, 0.05, "teacher"), 24),
              # the corpus texts and MarginMSE (6 corpus texts in the batch; the option's number is the sampler's)
              "corpus-scores": (Distillation("scores", 0.7, 0.02, "both", corpus=6), 16),
              "margin-mse": (Distillation(margin_mse=3.0), 16),
              "all-terms": (Distillation("scores+embeddings", 1.5, 0.05, "teacher", corpus=6, margin_mse=2.0), 24)})


@pytest.mark.parametrize("name", list(CASES))
def test_distillation_equals_the_numpy_oracle(name):
    d, size = CASES[name]
    for seed in (0, 1):
        inputs = case_inputs(d, size, seed)
        for unjudged in (inputs["unjudged"], None):
            inputs["unjudged"] = unjudged
            value, _, _, linear = run(inputs, d)
            weight = None if linear is None else linear.weight.detach().double().numpy()
            assert value == pytest.approx(oracle(inputs, d, weight), rel=1e-5)
            terms = {"scores": kl_oracle(inputs, d), "embeddings": embedding_oracle(inputs, weight, bool(d.corpus)),
                     "margin_mse": margin_oracle(inputs) if d.margin_mse else 0.0}
            assert all(abs(term) > 1e-6 for kind, term in terms.items() if kind in d.kind or kind == "margin_mse"
                       and d.margin_mse)  # each has work to do


def test_the_masks_differ_and_teacher_side_kl_is_a_divergence():
    inputs = random_inputs(4)
    values = {mask: kl_oracle(inputs, Distillation("scores", mask=mask)) for mask in DISTILL_MASKS}
    assert len({round(v, 6) for v in values.values()}) == len(DISTILL_MASKS)  # the batch has suspects to mask
    assert all(values[mask] > 0 for mask in ("both", "teacher", "none"))
    # unguided, there are no suspects: the mask option changes nothing
    plain = {mask: kl_oracle(inputs, Distillation("scores", mask=mask), guided=False) for mask in DISTILL_MASKS}
    assert max(plain.values()) == pytest.approx(min(plain.values()))
    assert run(inputs, Distillation("scores", mask="teacher"), guided=False)[0] == pytest.approx(
        contrastive_oracle(inputs, guided=False)[0] + plain["teacher"], rel=1e-5)


def test_corpus_texts_leave_the_masked_fraction_alone():
    """The masked fraction is the contrastive loss's (its entries only), whatever corpus texts the KL adds."""
    d = CASES["corpus-scores"][0]
    inputs = case_inputs(d, 16)
    columns = {k: Column(inputs[k], inputs["g" + k], inputs[f"{k}_ids"]) for k in "qpnc"}
    plain = GuidedBatch(columns["q"], columns["p"], columns["n"], inputs["known"], inputs["unjudged"])
    masked = gist_loss(temperature=TEMPERATURE, distill=d)(replace(plain, corpus=columns["c"]))[1]
    assert masked.item() == pytest.approx(gist_loss(temperature=TEMPERATURE)(plain)[1].item())
    assert 0 < masked.item() < 1


@pytest.mark.parametrize("name", ["scores-both", "scores-student", "both", "all-terms"])
def test_gradients_equal_finite_differences(name):
    d, size = CASES[name]
    inputs = case_inputs(d, size, 2)
    _, grads, map_grad, linear = run(inputs, d)
    weight = None if linear is None else linear.weight.detach().double().numpy()

    def total(moved: dict, w) -> float:
        return oracle(moved, d, w)

    for grad, expected in zip(grads, numeric_gradients(inputs, lambda moved: total(moved, weight),
                                                       keys=columns_of(inputs)), strict=True):
        torch.testing.assert_close(grad.double(), expected, rtol=1e-3, atol=1e-4)
    step = 1e-6
    if weight is not None:  # the map trains: its gradient, entry by entry
        for index in [(0, 0), (5, 3), (23, 15)]:
            moved = []
            for sign in (1, -1):
                w = weight.copy()
                w[index] += sign * step
                moved.append(total(inputs, w))
            assert map_grad[index].item() == pytest.approx((moved[0] - moved[1]) / (2 * step), rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_by_rows_equals_one_pass(name):
    """GradCache's memory-bounded loss: the distillation terms too give the loss and gradients of one pass."""
    d, size = CASES[name]
    inputs = case_inputs(d, size)
    loss, grads, map_grad, _ = run(inputs, d)
    for rows in (1, 3, 8):
        by_rows = run(inputs, d, rows)
        assert by_rows[0] == pytest.approx(loss, rel=1e-5)
        for mine, theirs in zip([*by_rows[1], by_rows[2]], [*grads, map_grad]):
            if theirs is None:
                assert mine is None
            else:
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def test_bad_options_are_refused():
    for bad in ({"kind": "logits"}, {"mask": "anchor"}, {"weight": 0.0}, {"temperature": -1.0}, {"corpus": -1},
                {"margin_mse": -0.5}, {"kind": "none", "corpus": 4}):
        with pytest.raises(ValueError):
            Distillation(**{"kind": "scores", **bad})
    with pytest.raises(ValueError, match="control"):
        gist_loss(control="random", distill=Distillation("scores", corpus=4))
    inputs = random_inputs()
    plain = GuidedBatch(*(Column(inputs[k], inputs["g" + k], inputs[f"{k}_ids"]) for k in "qpn"), inputs["known"])
    for d, missing in ((Distillation("scores", corpus=4), "corpus texts"), (Distillation(margin_mse=1.0), "margins")):
        with pytest.raises(ValueError, match=missing):
            gist_loss(distill=d)(plain)
    loss = gist_loss(distill=Distillation("embeddings"))
    with pytest.raises(ValueError, match="fit_embedding_map"):
        loss(plain)
    loss.fit_embedding_map(32, 16)
    with pytest.raises(ValueError, match="maps 32-dimensional student vectors, not 16"):
        loss(plain)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["both", "all-terms"])
def test_cuda_and_bf16_autocast_match_cpu(name):
    d, size = CASES[name]
    inputs = case_inputs(d, size, 5)
    expected = run(inputs, d)
    on_cuda = {k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}
    got = run(on_cuda, d, device="cuda")
    assert got[0] == pytest.approx(expected[0], rel=1e-4)
    for mine, theirs in zip([*got[1], got[2]], [*expected[1], expected[2]]):
        torch.testing.assert_close(mine.cpu(), theirs, rtol=1e-3, atol=1e-5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert run(on_cuda, d, device="cuda")[0] == pytest.approx(expected[0], rel=0.05)


def _ddp_worker(rank: int, world: int, port: int, out: dict):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for name, (d, size) in CASES.items():
        full = case_inputs(d, size)
        split = {k: NEGATIVE_SPLIT for k in ("n", "gn", "n_ids", "owner", "margins")}
        split.update({k: CORPUS_SPLIT for k in ("c", "gc", "c_ids")})
        share = {k: None if v is None else v[split.get(k, ANCHOR_SPLIT)[rank]: split.get(k, ANCHOR_SPLIT)[rank + 1]]
                 for k, v in full.items()}
        if "owner" in share:  # each negative's anchor, among this process's anchors
            share["owner"] = share["owner"] - ANCHOR_SPLIT[rank]
        out[name, rank] = run(share, d)[:3]
        out[name, rank, "by rows"] = run(share, d, 2)[:3]
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_with_unequal_shares_equal_one_process():
    """Averaged over ranks, as DDP averages: the loss and the students' gradients of the global batch; the map's
    gradient too (train.run averages it with the model's)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, port, out), nprocs=2, join=True)
    for name, (d, size) in CASES.items():
        single, grads, map_grad, _ = run(case_inputs(d, size), d)
        for by_rows in ((), ("by rows",)):
            ranks = [out[(name, rank, *by_rows)] for rank in (0, 1)]
            assert (ranks[0][0] + ranks[1][0]) / 2 == pytest.approx(single, rel=1e-5), name
            for column, expected in enumerate(grads):
                torch.testing.assert_close(torch.cat([r[1][column] for r in ranks]) / 2, expected, rtol=1e-4, atol=1e-6)
            if map_grad is not None:
                torch.testing.assert_close((ranks[0][2] + ranks[1][2]) / 2, map_grad, rtol=1e-4, atol=1e-6)


# -- train.run ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def narrow_student(tmp_path_factory):
    """A student of 24 dimensions (a Dense layer after the tiny model's 32), against the tiny guide's 32: embedding
    distillation needs its map. No dropout: every path sees the same embeddings."""
    from conftest import build_tiny_model
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense

    root = tmp_path_factory.mktemp("narrow")
    model = SentenceTransformer(str(build_tiny_model(root, seed=4, dropout=0.0)), device="cpu")
    torch.manual_seed(4)
    model.append(Dense(32, 24, activation_function=torch.nn.Identity()))
    model.save(str(root / "narrow"))
    return root / "narrow"


def test_bad_options_stop_with_one_line(mined_work, tiny_model, tmp_path, capsys):  # noqa: F811
    base = ["--work", mined_work / "w", "--student", tiny_model, "--max-steps", 1, "--out", tmp_path / "m", *COMMON]
    for bad in (["--distill", "scores", "--distill-weight", "0"], ["--distill", "scores", "--distill-temperature", "-1"],
                ["--distill", "embeddings", "--matryoshka-dims", "16"], ["--distill-corpus", "4"],
                ["--distill-margin-mse", "1"]):  # corpus rows for no term; no cross-encoder scores in mined/
        assert run_stage(train_command, *base, *bad) == 2
        assert capsys.readouterr().err.strip().startswith("error: --distill")
        assert not (tmp_path / "m").exists()


def test_the_trainers_first_step_is_the_distilled_loss_of_its_batch(mined_work, narrow_student, tmp_path):  # noqa: F811
    """train.run's first logged loss with --distill scores is GISTLoss's with that distillation on the first batch
    of the seed's plan (the student before its first update); more than the plain loss's."""
    from gist_mining.models import load_model

    base = ["--work", mined_work / "w", "--student", narrow_student, "--max-steps", 1, *COMMON]
    options = ["--distill", "scores", "--distill-weight", "0.5", "--distill-temperature", "0.02", "--distill-mask", "teacher"]
    assert run_stage(train_command, *base, "--out", tmp_path / "plain") == 0
    assert run_stage(train_command, *base, "--out", tmp_path / "scores", *options) == 0
    data = TrainingData(mined_work / "w", 1, "cpu")
    config = TrainConfig(batch_size=8, seed=3)
    batch = data.get_batch(epoch_batches(data, config, 1, 0)[0])
    model = load_model(str(narrow_student), device="cpu")
    student = {c: student_forward(model, batch.texts[c], "cpu", False, "") for c in COLUMNS}
    expected = gist_loss(temperature=0.05, distill=Distillation("scores", 0.5, 0.02, "teacher"))(batch.with_student(student))
    logged = {name: metrics(tmp_path / name)[0]["loss"] for name in ("plain", "scores")}
    assert logged["scores"] == pytest.approx(expected[0].item(), rel=1e-5)
    assert logged["scores"] > logged["plain"] + 1e-3


def test_embedding_map_trains_resumes_and_stays_out_of_the_model(mined_work, narrow_student, tmp_path):  # noqa: F811
    from sentence_transformers import SentenceTransformer

    args = ["--work", mined_work / "w", "--student", narrow_student, "--max-steps", 4, "--save-steps", 2, *COMMON,
            "--distill", "scores+embeddings"]
    assert run_stage(train_command, *args, "--out", tmp_path / "whole") == 0
    states = [torch.load(tmp_path / "whole" / "checkpoints" / f"step-000000{s}" / "trainer_state.pt", weights_only=True)
              for s in (2, 4)]
    maps = [state["loss"]["embedding_map.linear.weight"] for state in states]
    assert maps[0].shape == (32, 24) and not torch.equal(maps[0], maps[1])  # the map trains
    saved = SentenceTransformer(str(tmp_path / "whole"), device="cpu").state_dict()
    assert saved.keys() == SentenceTransformer(str(narrow_student), device="cpu").state_dict().keys()
    # killed after step 2: the resumed run follows the same losses (the map came back with the optimizer)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-0000002", cut / "checkpoints" / "step-0000002")
    assert run_stage(train_command, *args, "--out", cut, "--resume") == 0
    assert [m["loss"] for m in metrics(cut)] == [m["loss"] for m in metrics(tmp_path / "whole")][2:]


def test_grad_cache_step_equals_the_plain_step(mined_work, narrow_student):  # noqa: F811
    """cached_backward with both terms: the loss, the student's gradients and the map's of one plain pass."""
    grad_cache_equals_plain(mined_work / "w", narrow_student, Distillation("scores+embeddings", 0.5, 0.02))


def with_teacher(work, data: TrainingData, batch, rows, d: Distillation, negatives: int, key=(1, 0)):
    """train.run's batch of ``rows`` with the corpus texts and margins ``d`` asks for, as its loop adds them (the
    corpus texts drawn for ``key``: train.run's step and rank)."""
    from gist_mining.training.teacher_data import Teacher

    if d.corpus or d.margin_mse:
        Teacher(work, d, data.manifest, data.rows, negatives, TrainConfig().seed, "cpu").add(batch, rows, key)
    return batch


def grad_cache_equals_plain(work, narrow_student, d: Distillation):  # noqa: F811
    from gist_mining.models import load_model

    data = TrainingData(work, 2, "cpu")
    batch = with_teacher(work, data, data.get_batch(list(range(12))), list(range(12)), d, 2)
    model = load_model(str(narrow_student), device="cpu")
    loss_fn = gist_loss(temperature=0.05, distill=d)
    torch.manual_seed(MAP_SEED)
    loss_fn.fit_embedding_map(24, 32)

    def grads_of(step):
        model.zero_grad()
        loss_fn.zero_grad()
        value = step()
        return value, [p.grad.clone() for p in [*model.parameters(), *loss_fn.parameters()] if p.grad is not None]

    def plain():
        student = {c: student_forward(model, batch.texts[c], "cpu", False, "") for c in batch.columns}
        loss = loss_fn(batch.with_student(student))[0]
        loss.backward()
        return loss.item()

    expected = grads_of(plain)
    cached = grads_of(lambda: cached_backward(model, loss_fn, batch, "cpu", 5)[0].item())
    assert cached[0] == pytest.approx(expected[0], rel=1e-5)
    assert len(cached[1]) == len(expected[1]) > 10
    for mine, theirs in zip(cached[1], expected[1]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


# -- sentence-transformers' trainer (gist_mining.st) ---------------------------------------------------------

ST_CASES = {"scores": Distillation("scores", 0.5, 0.02, "teacher"), "embeddings": Distillation("embeddings", 0.5),
            "both": Distillation("scores+embeddings", 1.0, 0.05, "both")}


def st_and_train_run(work, model, rows, d: Distillation, mini_batch_size=None):  # noqa: F811
    """StoredGuideGISTLoss's loss and gradients (model's and map's) on these data set rows, and GISTLoss's on
    train.run's batch of the same anchors, with the same map."""
    from test_st import collate, fresh

    from gist_mining.st import StoredGuideGISTLoss

    features, labels = collate(model, rows)
    torch.manual_seed(MAP_SEED)  # the map's draw: the same whichever tests ran before
    st_loss = StoredGuideGISTLoss(model, work, temperature=0.05, mini_batch_size=mini_batch_size, distill=d)
    ours = gist_loss(temperature=0.05, distill=d)
    if d.embeddings:
        ours.fit_embedding_map(24, 32)
        ours.load_state_dict(st_loss.gist.state_dict())
    data = TrainingData(work, 1, "cpu")
    batch_rows = [r[-1] for r in rows["label"]]
    # the corpus texts StoredGuideGISTLoss draws: for rank 0 and the batch's anchors
    key = (0, *np.asarray([r[0] for r in rows["label"]]).astype(np.uint64).tolist())
    batch = with_teacher(work, data, data.get_batch(batch_rows), batch_rows, d, 1, key)

    def grads_of(loss_module, step):
        model.zero_grad()
        loss_module.zero_grad()
        value = step()
        value.backward()
        # the loss's parameters after the model's (the stock loss holds the model too: each parameter once)
        own = [p for p in loss_module.parameters() if all(p is not m for m in model.parameters())]
        return value.item(), [p.grad.clone() for p in [*model.parameters(), *own] if p.grad is not None]

    def train_run_loss():
        return ours(batch.with_student({c: student_forward(model, batch.texts[c], "cpu", False, "")
                                        for c in batch.columns}))[0]

    stored = grads_of(st_loss, lambda: st_loss(fresh(features), labels))
    return stored, grads_of(ours, train_run_loss), st_loss


@pytest.mark.parametrize("name", list(ST_CASES))
def test_stock_trainers_loss_equals_train_runs(work, narrow_student, name):  # noqa: F811
    """The same keywords on StoredGuideGISTLoss: the loss and gradients (the student's and the map's) of train.run's
    GISTLoss on the same anchors; GradCache (mini_batch_size) the same again."""
    from test_st import assert_same, load

    from gist_mining.st import mined_dataset

    model = load(narrow_student)
    model.eval()
    rows = mined_dataset(work, 1, short="drop").select(range(12))
    stored, expected, _ = st_and_train_run(work, model, rows, ST_CASES[name])
    if ST_CASES[name].embeddings:  # the map's gradient is there, after the model's
        assert stored[1][-1].shape == (32, 24)
    assert_same(stored, expected)
    cached, expected = st_and_train_run(work, model, rows, ST_CASES[name], mini_batch_size=3)[:2]
    assert cached[0] == pytest.approx(expected[0], rel=1e-5)
    for mine, theirs in zip(cached[1], expected[1], strict=True):  # chunks add up in another order: float32 noise
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    without, _, _ = st_and_train_run(work, model, rows, Distillation())
    assert stored[0] != pytest.approx(without[0], rel=1e-4)  # the keywords were passed on


def test_stock_trainer_trains_the_map_with_the_student(work, narrow_student, tmp_path):  # noqa: F811
    from sentence_transformers import SentenceTransformerTrainer
    from test_st import load, train_args

    from gist_mining.st import StoredGuideGISTLoss, mined_dataset

    model = load(narrow_student)
    loss = StoredGuideGISTLoss(model, work, distill=Distillation("scores+embeddings"))
    before = loss.gist.embedding_map.linear.weight.detach().clone()
    trainer = SentenceTransformerTrainer(model=model, args=train_args(tmp_path, report_to="none"),
                                         train_dataset=mined_dataset(work, 2, short="drop"), loss=loss)
    trainer.train()
    assert not torch.equal(before, loss.gist.embedding_map.linear.weight)  # in the trainer's optimizer
    assert all(h["loss"] > 0 for h in trainer.state.log_history if "loss" in h)
    model.save(str(tmp_path / "saved"))
    assert load(tmp_path / "saved").state_dict().keys() == load(narrow_student).state_dict().keys()
