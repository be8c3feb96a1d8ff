"""Export to sentence-transformers' formats: mine_hard_negatives' layouts, a training step, short anchors, the CLI."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import make_pairs, run_stage, st_range_max

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.export import FORMATS, build, to_dataset
from pipeline import embed, export, mask

K, N = 20, 3
# sentence-transformers keeps short anchors with what they have, except in n-tuple, which drops them
ST_SHORT = {"triplet": "keep", "n-tuple": "drop", "n-tuple-scores": "drop", "labeled-pair": "keep",
            "labeled-list": "keep"}


def mine(root, pairs: pl.DataFrame, guide):
    pairs.write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", guide) == 0
    assert run_stage(mask, "--work", root / "w", "--k", K, "--margin-strategy", "relative", "--margin", 0.05,
                     "--negatives-per-anchor", N, "--sampling", "top") == 0
    return root / "w"


@pytest.fixture(scope="module")
def pairs() -> pl.DataFrame:
    # Distinct queries and no given negatives: sentence-transformers' rules, so rows compare one to one
    return make_pairs(60, seed=3).select("query", "positive").unique("query", keep="first", maintain_order=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_guide, pairs):
    return mine(tmp_path_factory.mktemp("export"), pairs, tiny_guide)


@pytest.fixture(scope="module")
def theirs(tiny_guide, pairs) -> dict:
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    guide = SentenceTransformer(str(tiny_guide), device="cpu")
    dataset = Dataset.from_dict({"query": pairs["query"].to_list(), "positive": pairs["positive"].to_list()})
    return {fmt: mine_hard_negatives(dataset, guide, range_max=st_range_max(K), relative_margin=0.05, num_negatives=N,
                                     sampling_strategy="top", output_format=fmt, verbose=False) for fmt in FORMATS}


def negative_counts(work) -> pl.Series:
    files = workdir.verified(work, workdir.checked_mined_manifest(work), "mine")
    return pl.read_parquet(files)["negative_ids"].list.len()


@pytest.mark.parametrize("fmt", FORMATS)
def test_layout_and_rows_equal_mine_hard_negatives(work, theirs, fmt):
    ours, st = to_dataset(work, fmt, short=ST_SHORT[fmt]), theirs[fmt]
    assert list(ours.features.items()) == list(st.features.items())
    assert [(f.name, f.type) for f in ours.data.schema] == [(f.name, f.type) for f in st.data.schema]
    assert len(ours) > 0
    if "scores" not in ours.column_names:
        assert ours.to_list() == st.to_list()
        return
    texts = [c for c in ours.column_names if c != "scores"]
    assert ours.select_columns(texts).to_list() == st.select_columns(texts).to_list()
    # the guide's scores as mined (FAISS over stored vectors) against sentence-transformers' fresh ones
    np.testing.assert_allclose(np.array(ours["scores"]), np.array(st["scores"]), atol=1e-5)


def test_exported_triplets_train_a_step(work, tiny_model, tmp_path):
    import torch
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(tiny_model), device="cpu")
    before = [p.detach().clone() for p in model.parameters()]
    args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=8,
                                                report_to="none", save_strategy="no", use_cpu=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=to_dataset(work, "triplet"),
                                         loss=MultipleNegativesRankingLoss(model))
    result = trainer.train()
    assert result.global_step == 1 and math.isfinite(result.training_loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_short_anchors_kept_or_dropped(work):
    counts = negative_counts(work)
    full, some = int((counts == N).sum()), int(((counts > 0) & (counts < N)).sum())
    assert full > 0 and some > 0  # else this test says nothing
    rows = {(fmt, short): build(work, fmt, short=short).table.num_rows
            for fmt in FORMATS for short in ("drop", "keep") if not (fmt.startswith("n-tuple") and short == "keep")}
    assert rows["triplet", "drop"] == N * full and rows["triplet", "keep"] == counts.sum()
    assert rows["n-tuple", "drop"] == rows["n-tuple-scores", "drop"] == full
    assert rows["labeled-list", "drop"] == full and rows["labeled-list", "keep"] == full + some
    assert rows["labeled-pair", "drop"] == (1 + N) * full and rows["labeled-pair", "keep"] == len(counts) + counts.sum()
    assert build(work, "triplet", short="drop").short == len(counts) - full
    # fewer negatives: each anchor's first ones, and fewer anchors are short
    one = to_dataset(work, "n-tuple", num_negatives=1)
    assert one.column_names == ["query", "positive", "negative_1"] and len(one) == (counts >= 1).sum()
    assert one["negative_1"] == [docs[1] for docs in to_dataset(work, "labeled-list", short="keep")["positive"]]
    for bad in ({"num_negatives": N + 1}, {"num_negatives": 0}, {"short": "keep", "fmt": "n-tuple"}):
        with pytest.raises(UsageError):
            build(work, bad.pop("fmt", "triplet"), **bad)


def test_labeled_pair_groups_a_query_once(tmp_path, tiny_guide):
    """A query with several positives: its positives first, then each negative of its anchors once."""
    pairs = make_pairs(30, seed=5).select("query", "positive")
    pairs = pl.concat([pairs, pairs.head(4).with_columns(pl.col("positive") + " extra")])
    pairs_df = pl.DataFrame(to_dataset(mine(tmp_path, pairs, tiny_guide), "labeled-pair", short="keep").to_list())
    assert pairs_df.select("query", "positive").is_unique().all()
    # rows of one query are contiguous, in first-appearance order, positives before negatives
    runs = pairs_df.with_columns(pl.col("query").rle_id().alias("run"))
    assert runs.group_by("query").agg(pl.col("run").n_unique())["run"].max() == 1
    assert runs["query"].unique(maintain_order=True).to_list() == pairs["query"].unique(maintain_order=True).to_list()
    assert not runs.group_by("run").agg((pl.col("label").diff() > 0).any())["label"].any()
    assert pairs_df.filter(pl.col("label") == 1).height == pairs.unique().height


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_writes_parquet_jsonl_and_a_datasets_folder(work, tmp_path, fmt):
    from datasets import Dataset, load_from_disk

    expected = to_dataset(work, fmt)
    for name in ("x.parquet", "x.jsonl", "x"):
        assert run_stage(export, "--work", work, "--format", fmt, "--out", tmp_path / name) == 0
    loaded = [Dataset(pq.read_table(tmp_path / "x.parquet")), load_from_disk(str(tmp_path / "x")),
              Dataset.from_json(str(tmp_path / "x.jsonl"), cache_dir=str(tmp_path / "cache"))]
    for dataset in loaded:
        assert list(dataset.features.items()) == list(expected.features.items())
        assert dataset.to_list() == expected.to_list()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_cli_refuses_with_one_line(work, tmp_path, capsys):
    out = tmp_path / "x.parquet"
    cases = [(["--format", "quadruplet"], "--format"), (["--format", "n-tuple", "--short", "keep"], "--short keep"),
             (["--format", "triplet", "--negatives-per-anchor", N + 1], "--refilter --negatives-per-anchor"),
             (["--format", "triplet", "--work", tmp_path / "empty"], "mined_manifest.json"),
             (["--format", "triplet", "--out", tmp_path / "x.csv"], ".parquet or .jsonl")]
    for extra, says in cases:
        assert run_stage(export, "--work", work, "--out", out, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
        assert not out.exists()
    assert run_stage(export, "--work", work, "--format", "triplet", "--out", tmp_path / "folder") == 0
    assert run_stage(export, "--work", work, "--format", "triplet", "--out", tmp_path / "folder") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert run_stage(export, "--work", work, "--format", "labeled-list", "--out", tmp_path / "folder", "--overwrite") == 0
    from datasets import load_from_disk
    assert load_from_disk(str(tmp_path / "folder")).column_names == ["query", "positive", "labels"]
