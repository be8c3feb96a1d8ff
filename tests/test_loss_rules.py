"""The loss's later rules (LossRules: the student's own filter, hardness weighting, false negatives as positives,
down-weighted suspects) against a numpy oracle written from their definitions, entry by entry; by rows and under
two processes they are checked in tests/test_loss.py (RULES)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_stage
from test_loss import RULES, random_inputs, with_grads
from test_train import COMMON, metrics, mined_work  # noqa: F401  (the module's mined work directory fixture)

from gist_mining.lists import PAD_ID
from gist_mining.loss import Column, GISTLoss, GuidedBatch, LossRules
from gist_mining.margin import false_negative_threshold
from gist_mining.training.data import COLUMNS, TrainingData
from train import run as train_command

TEMPERATURE = 0.05


def oracle(inputs: dict, guided: bool = True, margin_strategy: str = "absolute", margin: float = 0.0,
           rules: LossRules = LossRules(), judged_at: dict | None = None) -> tuple[float, float]:
    """The loss and the fraction of entries taken out of the plain negatives, one anchor and one entry at a time.
    ``judged_at``: other student vectors the rules' decisions and hardness weights are taken from (held fixed, as
    the loss's stopgrad holds them, for finite differences). The guide's threshold is the shared mining rule's."""
    def units(source: dict) -> dict:
        vectors = {k: source[k].detach().double().numpy() for k in ("q", "p", "n")}
        return {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vectors.items()}

    student, fixed = units(inputs), units(judged_at or inputs)
    guide = {k: inputs["g" + k].double().numpy() for k in ("q", "p", "n")}
    ids = {k: inputs[f"{k}_ids"].tolist() for k in ("q", "p", "n")}
    unjudged = [False] * len(ids["q"]) if inputs["unjudged"] is None else inputs["unjudged"].tolist()
    # The blocks: (name, the anchor's column, the candidates' column)
    blocks = [("q-P", "q", "p"), ("q-N", "q", "n"), ("q-Q", "q", "q"), ("p-P", "p", "p")]
    hardened = {"in-batch": ("q-P",), "mined": ("q-N",), "all": ("q-P", "q-N")}[rules.hardness_negatives]
    total, taken, entries = 0.0, 0, 0
    for i in range(len(ids["q"])):
        known = {k for k in inputs["known"][i].tolist() if k != PAD_ID}
        positive_fixed = fixed["q"][i] @ fixed["p"][i]
        guide_positive = guide["q"][i] @ guide["p"][i]
        threshold = false_negative_threshold(guide_positive, margin_strategy, margin)
        numerator, denominator = [], []
        for block, row, column in blocks:
            for j, text in enumerate(ids[column]):
                entries += 1
                logit = student[row][i] @ student[column][j] / TEMPERATURE
                if block == "q-P" and j == i:  # the label
                    numerator.append(logit)
                    denominator.append(logit)
                    continue
                if text in (ids["q"][i], ids["p"][i]):  # the anchor's own texts
                    taken += 1
                    continue
                score_fixed, guide_score = fixed[row][i] @ fixed[column][j], guide[row][i] @ guide[column][j]
                by_guide = guided and not unjudged[i] and (guide_score > threshold or text in known)
                by_self = rules.self_filter and score_fixed > positive_fixed + rules.self_margin
                taken += by_guide or by_self
                if (rules.false_negatives == "positives" and by_guide and block in ("q-P", "q-N")
                        and (text in known or guide_score > guide_positive + rules.promote_margin)):
                    numerator.append(logit)
                    denominator.append(logit)
                    continue
                if block in hardened:
                    logit += rules.hardness_strength * score_fixed
                if by_guide or by_self:
                    if rules.suspect_weight == 0:
                        continue
                    logit += math.log(rules.suspect_weight)
                denominator.append(logit)
        total += np.logaddexp.reduce(denominator) - np.logaddexp.reduce(numerator)
    return total / len(ids["q"]), taken / entries


@pytest.mark.parametrize("name", ["gist", *RULES])
def test_rules_equal_the_numpy_oracle(name):
    settings = RULES.get(name, {})
    for seed in (0, 1):
        inputs = random_inputs(seed)
        for unjudged in (inputs["unjudged"], None):
            inputs["unjudged"] = unjudged
            loss, fraction, _ = with_grads(inputs, temperature=TEMPERATURE, **settings)
            expected, expected_fraction = oracle(inputs, **settings)
            assert loss == pytest.approx(expected, rel=1e-5) and fraction == pytest.approx(expected_fraction, abs=1e-6)
            # The rule has work to do on this batch: without it, the loss differs.
            if name != "gist":
                without = oracle(inputs, **{**settings, "rules": LossRules()})[0]
                assert abs(without - expected) > 1e-3


def test_gradients_equal_finite_differences_with_the_decisions_held():
    """Hardness weights are stopgrad(cosine) and the rules' decisions are constants of the step: the gradient is
    that of the oracle with both held where the step took them."""
    settings = RULES["all"]
    inputs = random_inputs(2)
    _, _, grads = with_grads(inputs, temperature=TEMPERATURE, **settings)
    numeric = numeric_gradients(inputs, lambda moved: oracle(moved, **settings, judged_at=inputs)[0])
    for grad, expected in zip(grads, numeric):
        torch.testing.assert_close(grad.double(), expected, rtol=1e-3, atol=1e-4)


def numeric_gradients(inputs: dict, value_of, step: float = 1e-6, keys=("q", "p", "n")) -> list[torch.Tensor]:
    """Central differences of ``value_of(inputs)`` with respect to the student columns ``keys``, entry by entry."""
    out = []
    for k in keys:
        numeric = torch.zeros_like(inputs[k], dtype=torch.float64)
        for index in np.ndindex(*inputs[k].shape):
            moved = []
            for sign in (1, -1):
                shifted = dict(inputs, **{k: inputs[k].double().clone()})
                shifted[k][index] += sign * step
                moved.append(value_of(shifted))
            numeric[index] = (moved[0] - moved[1]) / (2 * step)
        out.append(numeric)
    return out


def test_without_rules_the_multi_positive_loss_is_cross_entropy():
    """LossRules() is GISTEmbed's loss: F.cross_entropy over the masked logits, the label the only positive."""
    inputs = random_inputs(3)
    loss, _, _ = with_grads(inputs, temperature=TEMPERATURE)
    batch = GuidedBatch(*(Column(inputs[k], inputs["g" + k], inputs[f"{k}_ids"]) for k in ("q", "p", "n")),
                        inputs["known"], inputs["unjudged"])
    logits, mask, labels, _ = GISTLoss(TEMPERATURE, "absolute", 0.0).masked_logits(batch)
    expected = torch.nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")) / TEMPERATURE, labels)
    assert loss == pytest.approx(expected.item(), rel=1e-6)


def test_bad_rules_stop_with_one_line(mined_work, tiny_model, tmp_path, capsys):  # noqa: F811
    base = ["--work", mined_work / "w", "--student", tiny_model, "--max-steps", 1, "--out", tmp_path / "m", *COMMON]
    for bad in (["--suspect-weight", "2"], ["--guide-filter", "none", "--false-negatives", "positives"],
                ["--guide-filter", "random", "--false-negatives", "positives"]):
        assert run_stage(train_command, *base, *bad) == 2
        assert capsys.readouterr().err.strip().startswith("error: --guide-filter")
        assert not (tmp_path / "m").exists()


def test_trainer_self_filter_masks_beyond_the_guide(mined_work, tiny_model, tmp_path):  # noqa: F811
    """On the first step (the same student for every run), guide+self masks what either masks: at least as
    much as each; the student's own filter masks more than the plain loss; other rules train too."""
    base = ["--work", mined_work / "w", "--student", tiny_model, "--max-steps", 1, *COMMON, "--self-margin", "0.0"]
    first = {}
    for name, extra in {"none": [], "precomputed": [], "self": [], "guide+self": [],
                        "precomputed-rules": ["--hardness-strength", "5", "--false-negatives", "positives",
                                              "--suspect-weight", "0.5"]}.items():
        assert run_stage(train_command, *base, "--out", tmp_path / name, "--guide-filter", name.split("-")[0], *extra) == 0
        first[name] = metrics(tmp_path / name)[0]
    assert first["self"]["masked_fraction"] > first["none"]["masked_fraction"]
    assert first["guide+self"]["masked_fraction"] >= max(first["self"]["masked_fraction"],
                                                         first["precomputed"]["masked_fraction"])
    assert first["precomputed-rules"]["masked_fraction"] == first["precomputed"]["masked_fraction"]
    assert first["precomputed-rules"]["loss"] != first["precomputed"]["loss"]


def test_known_false_negatives_join_the_batch_as_their_anchors_positives(mined_work, tiny_model, tmp_path):  # noqa: F811
    import polars as pl

    work = mined_work / "w"
    mined = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")
    data = TrainingData(work, 1, "cpu", false_negatives=2)
    rows = [r for r in range(len(mined)) if mined["false_negative_ids"][r].len()][:6]
    assert rows, "the mined work directory has known false negatives"
    batch = data.get_batch(rows)
    own = [mined["negative_ids"][r].to_list()[:1] + mined["false_negative_ids"][r].to_list()[:2] for r in rows]
    assert batch.ids["negatives"].tolist() == [i for ids in own for i in ids]
    student = batch.with_student({c: batch.guide[c].float() for c in COLUMNS})  # any vectors will do
    entries, _ = GISTLoss(TEMPERATURE, "absolute", 0.0, rules=LossRules(false_negatives="positives"))._batch_entries(student)
    start = len(rows)  # the negatives block follows the positives
    for i, ids in enumerate(own):
        brought = [start + sum(map(len, own[:i])) + k for k in range(1, len(ids))]
        assert entries.positives[i, brought].all() and entries.positives[i].sum() >= 1 + len(brought)
    base = ["--work", work, "--student", tiny_model, "--max-steps", 1, *COMMON, "--false-negatives", "positives"]
    for n in (0, 2):
        assert run_stage(train_command, *base, "--out", tmp_path / str(n), "--false-negatives-in-batch", n) == 0
    assert metrics(tmp_path / "2")[0]["negatives"] > metrics(tmp_path / "0")[0]["negatives"]
