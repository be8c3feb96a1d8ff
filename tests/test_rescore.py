"""Cross-encoder rescoring in the mask stage (tiny random CrossEncoders built on the fly): stored scores against
CrossEncoder.predict, the rules on rescores against brute force, refilter switching scores without scoring,
resuming a killed run, shard processes, and staleness when the rescore model changes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from conftest import build_tiny_cross_encoder, make_pairs, run_stage

from gist_mining import rescore
from gist_mining.mining import SCORES
from gist_mining.storage import file_sha256
from pipeline import embed, mask

SEARCH = ("--k", 8, "--anchors-per-shard", 16)  # 43 anchors: 3 shards


@pytest.fixture(scope="module")
def cross_encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross-encoders")
    return build_tiny_cross_encoder(root / "a", seed=0), build_tiny_cross_encoder(root / "b", seed=1)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("rescore")
    pairs = make_pairs(40, seed=2)
    # repeated queries with other positives: their shared (query, candidate) pairs are scored once
    pl.concat([pairs, pairs.head(3).with_columns(pl.col("positive") + " again")]).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide) == 0
    return root / "w"


@pytest.fixture(scope="module")
def rescored(embedded, cross_encoders, tmp_path_factory):
    """An uninterrupted run rescored by model a, rules on the guide's scores."""
    work = tmp_path_factory.mktemp("rescored") / "w"
    shutil.copytree(embedded, work)
    assert run_stage(mask, "--work", work, *SEARCH, "--rescore-model", cross_encoders[0]) == 0
    return work


def copy(work, tmp_path, name="w"):
    shutil.copytree(work, tmp_path / name)
    return tmp_path / name


def candidates(work) -> pl.DataFrame:
    return pl.read_parquet(work / "candidates" / "*.parquet").sort("anchor_id")


def mined(work) -> pl.DataFrame:
    return pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")


def shard_files(work) -> dict:
    return {p.name: (p.stat().st_mtime_ns, file_sha256(p)) for p in sorted((work / "candidates").iterdir())}


def test_stored_rescores_equal_cross_encoder_predict(rescored, embedded, cross_encoders, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    text = dict(pl.read_parquet(rescored / "texts.parquet").select("text_id", "text").iter_rows())
    table = candidates(rescored)
    pairs, stored = [], []
    for row in table.iter_rows(named=True):
        others = [row["positive_id"], *row["candidate_ids"], *row["given_negative_ids"]]
        pairs += [(text[row["query_id"]], text[o]) for o in others]
        stored += [row["rescore_positive_score"], *row["rescore_candidate_scores"], *row["rescore_given_negative_scores"]]
    assert table["given_negative_ids"].list.len().sum() > 0
    model = CrossEncoder(str(cross_encoders[0]), device="cpu")
    np.testing.assert_allclose(stored, model.predict(pairs, activation_fn=torch.nn.Sigmoid()), atol=1e-5)
    # the model saved Identity (its predict gives logits); the stored scores are sigmoid(logit) all the same
    assert not np.allclose(stored, model.predict(pairs), atol=1e-3)
    # the guide's columns are those of a run without rescoring, whose rescore columns are null
    plain = copy(embedded, tmp_path)
    assert run_stage(mask, "--work", plain, *SEARCH) == 0
    guide_columns = [c for c in table.columns if c not in SCORES["rescore"]]
    assert candidates(plain).select(guide_columns).equals(table.select(guide_columns))
    assert all(candidates(plain)[c].null_count() == table.height for c in SCORES["rescore"])


def brute_force(row: dict, margin: float, n: int, rank_min: int) -> dict:
    """The absolute-margin rule applied to one anchor's rescores, candidates re-ranked by them."""
    threshold = np.float32(row["rescore_positive_score"]) - np.float32(margin)
    ranked = sorted(zip(row["candidate_ids"], row["rescore_candidate_scores"]), key=lambda c: -c[1])  # stable
    given = list(zip(row["given_negative_ids"], row["rescore_given_negative_scores"]))
    given_flagged = [np.float32(s) > threshold for _, s in given]
    kept_given = [g for (g, _), flag in zip(given, given_flagged) if not flag][:n]
    survivors = [c for c, s in ranked if not np.float32(s) > threshold and c not in row["given_negative_ids"]]
    chosen = kept_given + survivors[rank_min:][: max(n - len(kept_given), 0)]
    false_negatives = {c for c, s in ranked if np.float32(s) > threshold} | {
        g for (g, _), flag in zip(given, given_flagged) if flag}
    return {"negative_ids": chosen, "false_negative_ids": sorted(false_negatives), "given_negative_flagged": given_flagged}


def test_rules_on_rescores_equal_brute_force(rescored, tmp_path):
    work = copy(rescored, tmp_path)
    assert run_stage(mask, "--work", work, "--refilter", "--score", "rescore", "--margin-strategy", "absolute",
                     "--margin", 0.02, "--negatives-per-anchor", 2, "--rank-min", 1) == 0
    ours = mined(work)
    score_of = {}
    for row in candidates(work).iter_rows(named=True):
        expected = brute_force(row, 0.02, 2, 1)
        got = ours.row(by_predicate=pl.col("anchor_id") == row["anchor_id"], named=True)
        assert got["negative_ids"] == expected["negative_ids"]
        assert sorted(got["false_negative_ids"]) == expected["false_negative_ids"]
        assert got["given_negative_flagged"] == expected["given_negative_flagged"]
        assert got["positive_score"] == row["rescore_positive_score"]
        score_of.update(zip(row["candidate_ids"] + row["given_negative_ids"],
                            row["rescore_candidate_scores"] + row["rescore_given_negative_scores"]))
        assert got["negative_scores"] == [score_of[i] for i in got["negative_ids"]]
    assert ours["false_negative_ids"].list.len().sum() > 0 and ours["negative_ids"].list.len().sum() > 0


def test_refilter_switches_scores_without_scoring(rescored, embedded, cross_encoders, tmp_path, monkeypatch):
    work = copy(rescored, tmp_path)
    before = shard_files(work)

    def no_loading(*_, **__):
        raise AssertionError("--refilter loaded the cross-encoder")

    monkeypatch.setattr(rescore, "load_cross_encoder", no_loading)
    rules = ("--margin", 0.1, "--negatives-per-anchor", 2)
    assert run_stage(mask, "--work", work, "--refilter", "--score", "rescore", *rules) == 0
    on_rescores = mined(work)
    summary = json.loads((work / "mined_summary.json").read_text())
    assert summary["score"] == "rescore" and summary["rescore_model"] == str(cross_encoders[0])
    assert run_stage(mask, "--work", work, "--refilter", "--score", "guide", *rules) == 0
    on_guide = mined(work)
    assert json.loads((work / "mined_manifest.json").read_text())["score"] == "guide"
    assert shard_files(work) == before
    assert not on_rescores.equals(on_guide)
    monkeypatch.undo()
    for score, result in (("rescore", on_rescores), ("guide", on_guide)):
        fresh = copy(embedded, tmp_path, f"fresh-{score}")
        assert run_stage(mask, "--work", fresh, *SEARCH, "--rescore-model", cross_encoders[0], "--score", score,
                         *rules) == 0
        assert mined(fresh).equals(result)


def test_rescore_scores_that_do_not_exist_are_refused(embedded, tmp_path, capsys):
    work = copy(embedded, tmp_path)
    assert run_stage(mask, "--work", work, *SEARCH, "--score", "rescore") == 2
    assert not (work / "candidates").exists()
    assert run_stage(mask, "--work", work, *SEARCH) == 0
    plan = (work / "mine_plan.json").read_text()
    capsys.readouterr()
    assert run_stage(mask, "--work", work, "--refilter", "--score", "rescore") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hold no cross-encoder scores" in err[0]
    assert (work / "mine_plan.json").read_text() == plan


def test_a_killed_run_resumes_and_shard_processes_agree(embedded, rescored, cross_encoders, tmp_path, monkeypatch):
    work = copy(embedded, tmp_path)
    scored, real = [], rescore.Rescorer.columns

    def killed_in_second_shard(self, table):
        scored.append(table.num_rows)
        if len(scored) == 2:
            raise KeyboardInterrupt
        return real(self, table)

    monkeypatch.setattr(rescore.Rescorer, "columns", killed_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_stage(mask, "--work", work, *SEARCH, "--rescore-model", cross_encoders[0])
    done = shard_files(work)
    assert [name for name in done if name.endswith(".parquet")] == ["shard-00000.parquet"]
    scored.clear()
    monkeypatch.setattr(rescore.Rescorer, "columns", lambda self, table: scored.append(0) or real(self, table))
    assert run_stage(mask, "--work", work, *SEARCH, "--rescore-model", cross_encoders[0]) == 0
    assert len(scored) == 2  # shards 1 and 2; shard 0 was kept
    assert {k: v for k, v in shard_files(work).items() if k in done} == done
    assert candidates(work).equals(candidates(rescored)) and mined(work).equals(mined(rescored))
    split = copy(embedded, tmp_path, "split")
    for index in (0, 1):
        assert run_stage(mask, "--work", split, *SEARCH, "--rescore-model", cross_encoders[0], "--num-shards", 2,
                         "--shard-index", index) == 0
    assert candidates(split).equals(candidates(rescored)) and mined(split).equals(mined(rescored))


def test_another_rescore_model_makes_candidates_stale(embedded, cross_encoders, tmp_path, capsys):
    work, model = copy(embedded, tmp_path), tmp_path / "model"
    shutil.copytree(cross_encoders[0], model)
    assert run_stage(mask, "--work", work, *SEARCH, "--rescore-model", model) == 0
    first = candidates(work)
    # the same path with other weights is another model
    shutil.copy(cross_encoders[1] / "model.safetensors", model / "model.safetensors")
    capsys.readouterr()
    assert run_stage(mask, "--work", work, *SEARCH, "--rescore-model", model) == 2
    err = capsys.readouterr().err
    assert "other rescore model" in err and "--overwrite" in err
    assert run_stage(mask, "--work", work, *SEARCH) == 2  # no rescoring is another search too
    assert run_stage(mask, "--work", work, "--refilter", "--rescore-model", cross_encoders[1]) == 2
    assert "candidates/ have" in capsys.readouterr().err
    assert candidates(work).equals(first)
    assert run_stage(mask, "--work", work, *SEARCH, "--rescore-model", model, "--overwrite") == 0
    again = candidates(work)
    assert again["candidate_ids"].equals(first["candidate_ids"])
    assert not np.allclose(again["rescore_positive_score"], first["rescore_positive_score"], atol=1e-3)


def test_models_that_cannot_rescore_are_refused(embedded, cross_encoders, tiny_guide, tmp_path, capsys):
    """One line and exit status 2, before anything is written."""
    work = copy(embedded, tmp_path)
    refused = {"not a cross-encoder": ("--rescore-model", tiny_guide),  # CrossEncoder would add a random head
               "gives 2 scores per pair": ("--rescore-model", build_tiny_cross_encoder(tmp_path / "two", num_labels=2)),
               "--rescore-batch-size must be at least 1": ("--rescore-model", cross_encoders[0],
                                                           "--rescore-batch-size", 0)}
    for why, args in refused.items():
        capsys.readouterr()
        assert run_stage(mask, "--work", work, *SEARCH, *args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and why in err[0], err
        assert not (work / "candidates").exists()
