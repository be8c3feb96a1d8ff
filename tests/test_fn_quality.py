"""False-negative quality against ground truth: the metrics on hand-counted cases, the frontier, the truth data."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from conftest import ROOT, make_pairs, run_stage

from gist_mining import fn_quality, workdir
from gist_mining.errors import UsageError
from gist_mining.mining import CANDIDATE_SCHEMA, MiningRules
from gist_mining.workdir import text_id, text_ids
from pipeline import embed, mask, report

TRUTH = pl.DataFrame({"query_id": [10, 11], "positive_id": [20, 21], "false_negative_ids": [[101, 103, 999], [202]]})


def candidates(rows: list[tuple]) -> pa.Table:
    """Rows of (anchor, query, positive, positive score, candidate ids, candidate scores), no given negatives."""
    return pa.Table.from_pylist([
        {"anchor_id": a, "query_id": q, "positive_id": p, "task": "t", "positive_score": s, "weakest_positive_score": s,
         "candidate_ids": ids, "candidate_scores": scores, "given_negative_ids": [], "given_negative_scores": []}
        for a, q, p, s, ids, scores in rows], schema=CANDIDATE_SCHEMA)


def test_anchor_stats_and_rates_counted_by_hand():
    cands = pl.from_arrow(candidates([
        (1, 10, 20, 0.5, [101, 102, 103, 104], [0.9, 0.6, 0.4, 0.3]),  # median 0.5: not below it, judged
        (2, 11, 21, 0.25, [201, 202, 203], [0.75, 0.5, 0.375]),  # median 0.5: cannot judge
        (3, 12, 22, 0.5, [301], [0.25]),  # no truth: left out
    ]))
    mined = pl.DataFrame({"anchor_id": [1, 2, 3], "negative_ids": [[103, 104], [201], [301]],
                          "negative_scores": [[0.375, 0.25], [0.75], [0.25]], "false_negative_ids": [[101, 102], [], []]})
    stats = fn_quality.anchor_stats(cands, mined, TRUTH).sort("anchor_id")
    assert stats.drop("gap_sum").rows() == [(1, 2, 1, 2, 2, 1, False), (2, 1, 0, 1, 0, 0, True)]
    assert stats["gap_sum"].to_list() == pytest.approx([-0.375, 0.5])

    overall = fn_quality.rates(fn_quality.tally(stats, num_negatives=2).with_columns(rule=pl.lit("r")), ["rule"])
    row = overall.row(0, named=True)
    assert row["anchors"] == 2 and row["anchors_short"] == 1  # anchor 2 has 1 < 2
    assert row["contamination"] == pytest.approx(1 / 3)  # 103 of {103, 104, 201}
    assert row["recall"] == pytest.approx(1 / 3)  # reached 101, 103, 202; flagged 101
    assert row["negatives_per_anchor"] == pytest.approx(1.5)
    assert row["hardness"] == pytest.approx((0.375 - 0.5 + 0.25 - 0.5 + 0.75 - 0.25) / 3)
    assert row["flagged_per_anchor"] == 1.0  # 101 and 102 over two anchors
    assert row["known_reached_per_anchor"] == 1.5
    groups = fn_quality.rates(fn_quality.tally(stats, 2), ["cannot_judge"]).sort("cannot_judge")
    assert groups["contamination"].to_list() == pytest.approx([0.5, 0.0])


def test_sweep_applies_the_rules_and_adds_chunks():
    """One anchor, positive 0.5; candidates 0.9 and 0.45 are known false negatives."""
    truth = pl.DataFrame({"query_id": [10], "positive_id": [20], "false_negative_ids": [[1, 3]]})
    one = candidates([(7, 10, 20, 0.5, [1, 2, 3, 4, 5], [0.9, 0.6, 0.45, 0.3, 0.2])])
    rules = {"none": MiningRules("none", 0.0, num_negatives=2),  # takes 0.9, 0.6
             "absolute 0": MiningRules("absolute", 0.0, num_negatives=2),  # flags 0.9, 0.6; takes 0.45, 0.3
             "rank-min 1": MiningRules("none", 0.0, rank_min=1, num_negatives=2),  # takes 0.6, 0.45
             "max 0.5": MiningRules("none", 0.0, max_score=0.5, num_negatives=5)}  # takes 0.45, 0.3, 0.2
    result = fn_quality.rates(fn_quality.sweep([one], truth, rules), ["rule"])
    assert result["contamination"].to_list() == pytest.approx([0.5, 0.5, 0.5, 1 / 3])
    assert result["recall"].to_list() == pytest.approx([0.0, 0.5, 0.0, 0.5])
    assert result["anchors_short"].to_list() == [0, 0, 0, 1]

    other = candidates([(8, 11, 21, 0.5, [6], [0.1])])  # no truth
    chunked = fn_quality.rates(fn_quality.sweep([one, other], truth, rules), ["rule"])
    assert chunked.equals(result)
    with pytest.raises(UsageError, match="matches no anchor"):
        fn_quality.sweep([other], truth, rules)


def test_combine_takes_each_group_from_its_rule():
    tallies = pl.DataFrame({"rule": ["a", "a", "b", "b"], "cannot_judge": [False, True, False, True],
                            "anchors": [2, 2, 2, 2], "negatives": [6, 0, 6, 6], "known_chosen": [1, 0, 3, 1],
                            "reached": [2, 2, 2, 2], "flagged": [3, 8, 0, 0], "flagged_reached": [1, 2, 0, 0],
                            "gap_sum": [-0.6, 0.0, 0.6, 0.6],
                            "anchors_short": [0, 2, 0, 0]})
    row = fn_quality.rates(fn_quality.combine(tallies, "a", "b"), ["rule"]).row(0, named=True)
    assert row["rule"] == "a; cannot judge: b"
    assert row["contamination"] == pytest.approx(2 / 12) and row["recall"] == pytest.approx(1 / 4)
    assert row["negatives_per_anchor"] == 3 and row["anchors_short"] == 0 and row["flagged_per_anchor"] == 0.75


def test_pareto_frontier_on_a_hand_built_point_set():
    points = pl.DataFrame({
        "rule": ["A", "B", "C", "D", "E", "F", "G"],
        "contamination": [0.1, 0.05, 0.2, 0.05, 0.0, 0.1, math.nan],
        "negatives_per_anchor": [3.0, 2.0, 3.0, 1.0, 1.0, 3.0, 5.0],
        "hardness": [0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0],
    })  # C is beaten by A, D by B; F repeats A; G has no contamination
    assert fn_quality.pareto_frontier(points)["rule"].to_list() == ["E", "B", "A"]
    three = fn_quality.pareto_frontier(points, maximize=("negatives_per_anchor", "hardness"))
    assert three["rule"].to_list() == ["E", "B", "A", "C"]  # C is the hardest


def test_read_truth_refuses_bad_files(tmp_path):
    TRUTH.drop("positive_id").write_parquet(tmp_path / "a.parquet")
    with pytest.raises(UsageError, match="missing column"):
        fn_quality.read_truth(tmp_path / "a.parquet")
    pl.concat([TRUTH, TRUTH.head(1)]).write_parquet(tmp_path / "b.parquet")
    with pytest.raises(UsageError, match="appears twice"):
        fn_quality.read_truth(tmp_path / "b.parquet")


def test_report_draws_the_frontier_for_a_work_directory_with_truth(tmp_path, tiny_guide):
    pairs = make_pairs(40, seed=3)
    pairs.write_parquet(tmp_path / "pairs.parquet")
    work = tmp_path / "w"
    assert run_stage(embed, "--input", tmp_path / "pairs.parquet", "--work", work, "--guide", tiny_guide) == 0
    assert run_stage(mask, "--work", work, "--k", 8) == 0
    # Half the other positives are called known false negatives of each pair.
    positives = pairs["positive"].unique(maintain_order=True).to_list()
    truth = pairs.select(query_id=pl.Series(text_ids(pairs["query"].to_list())),
                         positive_id=pl.Series(text_ids(pairs["positive"].to_list())),
                         false_negative_ids=pl.lit(text_ids(positives[::2]).tolist()))
    assert run_stage(report, "--work", work) == 0
    assert "against ground truth" not in (work / workdir.REPORT / "index.html").read_text()
    truth.write_parquet(work / workdir.TRUTH)
    assert run_stage(report, "--work", work) == 0
    page = (work / workdir.REPORT / "index.html").read_text()
    assert "False negatives against ground truth" in page and "this run" in page
    assert (work / workdir.FN_FRONTIER).stat().st_size > 0


# -- the data set ------------------------------------------------------------------------------------------

DATA = ROOT / "data" / "fn_truth"


def test_committed_truth_is_consistent_with_its_pairs_and_corpus():
    pairs, corpus = pl.read_parquet(DATA / "pairs.parquet"), pl.read_parquet(DATA / "corpus.parquet")
    truth = fn_quality.read_truth(DATA / "truth.parquet")
    assert pairs["query"].is_unique().all() and corpus["text"].is_unique().all()
    assert truth["query_id"].to_list() == text_ids(pairs["query"].to_list()).tolist()
    assert truth["positive_id"].to_list() == text_ids(pairs["positive"].to_list()).tolist()
    corpus_ids = set(text_ids(corpus["text"].to_list()).tolist())
    known = truth.explode("false_negative_ids")
    assert set(known["false_negative_ids"].drop_nulls()) <= corpus_ids
    assert (known["false_negative_ids"] != known["positive_id"]).all()
    assert truth["false_negative_ids"].list.len().min() >= 1
    assert sum(p.stat().st_size for p in DATA.iterdir()) < 2_000_000


WORDNET = Path("/usr/share/wordnet")


@pytest.mark.skipif(not (WORDNET / "data.noun").exists(), reason="WordNet is not installed (apt-get install wordnet-base)")
def test_builder_invariants_on_a_wordnet_slice():
    spec = importlib.util.spec_from_file_location("build_fn_truth", ROOT / "data" / "build_fn_truth.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    synsets = builder.read_synsets()[::25]  # a slice: every 25th synset of every part of speech
    frames = builder.build(synsets, n_lemmas=60, n_distractors=40, max_senses=6, seed=1)
    assert frames["truth"].equals(builder.build(synsets, 60, 40, 6, seed=1)["truth"])  # seeded
    pairs, corpus, truth = frames["pairs"], frames["corpus"], frames["truth"]
    assert pairs.columns == ["query", "positive", "task"] and pairs.height == 60 and pairs["query"].is_unique().all()

    lemmas_of: dict[str, set[str]] = {}  # gloss -> every lemma of every synset with that gloss
    for synset in synsets:
        lemmas_of.setdefault(synset["gloss"], set()).update(lemma.lower() for lemma in synset["lemmas"])
    id_of = {text_id(text): text for text in corpus["text"]}
    for row in truth.iter_rows(named=True):
        lemma, positive = row["query"], row["positive"]
        assert row["query_id"] == text_id(lemma) and row["positive_id"] == text_id(positive)
        assert positive in set(corpus["text"]) and lemma in lemmas_of[positive]
        known = {id_of[i] for i in row["false_negative_ids"]}  # every one is a corpus text
        assert positive not in known and 1 <= len(known) <= 5
        # Exactly the corpus glosses of the lemma's other senses: each listed, none left unlabelled.
        assert known == {g for g in corpus["text"] if lemma in lemmas_of[g]} - {positive}
