"""Prompts per role: the stored vectors of each role, search and masks across roles, the guide's blocks in
training, the student's prompts, prompt names from a model's config, and staleness when a prompt changes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from conftest import build_tiny_model, eval_split, make_pairs, run_stage

from gist_mining import workdir
from gist_mining.loss import GISTLoss
from gist_mining.training.data import COLUMNS, TrainingData
from gist_mining.training.evaluate import headline, make_evaluator
from gist_mining.training.loop import epoch_batches
from gist_mining.workdir import VectorStore, load_embeddings
from pipeline import embed, mask
from train import run as train_command

QUERY, DOCUMENT = "query answer ", "text page "  # words of the tiny model's vocabulary


def encoder(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def by_id(work, role: str) -> dict:
    ids, vectors = load_embeddings(work, role)
    return dict(zip(ids.tolist(), vectors))


@pytest.fixture(scope="module")
def roles(tmp_path_factory, tiny_guide):
    """A work directory embedded with a query prompt unlike the document prompt, and searched."""
    root = tmp_path_factory.mktemp("roles")
    pairs = make_pairs(40, seed=4)
    # texts that are a query in one row and a positive or a given negative in another
    both = pl.DataFrame({"query": [pairs["positive"][0], pairs["negative"][1][0]], "positive": ["red car", "blue car"],
                         "negative": [[], []], "task": ["a", "b"]})
    pl.concat([pairs, both]).write_parquet(root / "pairs.parquet")
    pl.DataFrame({"text": ["green tree house", "cold night"]}).write_parquet(root / "corpus.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--corpus", root / "corpus.parquet", "--work",
                     root / "w", "--guide", tiny_guide, "--texts-per-shard", 30, "--query-prompt", QUERY,
                     "--document-prompt", DOCUMENT) == 0
    assert run_stage(mask, "--work", root / "w", "--k", 10, "--index", "flat", "--include-queries",
                     "--margin-strategy", "absolute", "--margin", 0.0, "--negatives-per-anchor", 2) == 0
    return root


def test_each_role_is_stored_as_encode_of_its_prompt_and_text(roles, tiny_guide):
    work = roles / "w"
    texts = pl.read_parquet(work / workdir.TEXTS)
    model = encoder(tiny_guide)
    for role, prompt, expected_ids in (("document", DOCUMENT, texts["text_id"]),
                                       ("query", QUERY, texts.filter("is_query")["text_id"])):
        vectors = by_id(work, role)
        assert set(vectors) == set(expected_ids)  # documents: every text (--include-queries); queries: the queries
        chosen = texts.filter(pl.col("text_id").is_in(list(vectors)))
        oracle = model.encode([prompt + t for t in chosen["text"]], normalize_embeddings=True)
        np.testing.assert_allclose(np.stack([vectors[i] for i in chosen["text_id"]]), oracle, atol=1e-5)
    both = texts.filter(pl.col("is_query") & pl.col("is_document"))["text_id"].to_list()
    assert len(both) == 2
    query, document = by_id(work, "query"), by_id(work, "document")
    assert all(np.abs(query[i] - document[i]).max() > 1e-3 for i in both)


def test_equal_prompts_embed_each_text_once(tmp_path, tiny_guide):
    make_pairs(20, seed=6).write_parquet(tmp_path / "pairs.parquet")
    common = ["--input", tmp_path / "pairs.parquet", "--guide", tiny_guide]
    assert run_stage(embed, *common, "--work", tmp_path / "short", "--prompt", DOCUMENT) == 0
    assert run_stage(embed, *common, "--work", tmp_path / "long", "--query-prompt", DOCUMENT,
                     "--document-prompt", DOCUMENT) == 0
    work = tmp_path / "short"
    shard = pq.read_table(work / workdir.EMBEDDINGS / workdir.shard_name(0))
    texts = pl.read_parquet(work / workdir.TEXTS)
    assert shard.column_names == ["text_id", "embedding"] and shard.num_rows == texts.height
    vectors = by_id(work, "document")
    oracle = encoder(tiny_guide).encode([DOCUMENT + t for t in texts["text"]], normalize_embeddings=True)
    np.testing.assert_allclose(np.stack([vectors[i] for i in texts["text_id"]]), oracle, atol=1e-5)
    assert VectorStore(work, "query").path == VectorStore(work).path  # one matrix serves both roles
    plans = [json.loads((tmp_path / w / workdir.EMBED_PLAN).read_text()) for w in ("short", "long")]
    assert plans[0]["fingerprint"] == plans[1]["fingerprint"]  # --prompt is shorthand for both roles


@pytest.fixture(scope="module")
def prompted_model(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("prompted"), seed=2)
    config = json.loads((path / "config_sentence_transformers.json").read_text())
    config["prompts"] = {"query": QUERY, "document": "", "search": "good query "}
    (path / "config_sentence_transformers.json").write_text(json.dumps(config))
    return path


def test_prompt_names_resolve_from_the_model_config(tmp_path, prompted_model, capsys):
    make_pairs(15, seed=7).write_parquet(tmp_path / "pairs.parquet")
    common = ["--input", tmp_path / "pairs.parquet", "--guide", prompted_model]
    model = encoder(prompted_model)
    # no flags: each role's prompt as encode_query and encode_document choose it; a name: the model's prompt
    for work, flags, encode_query in (("auto", [], model.encode_query),
                                      ("named", ["--query-prompt-name", "search"],
                                       lambda t, **kw: model.encode(t, prompt_name="search", **kw))):
        assert run_stage(embed, *common, "--work", tmp_path / work, *flags) == 0
        texts = pl.read_parquet(tmp_path / work / workdir.TEXTS)
        for role, encode_role, chosen in (("query", encode_query, texts.filter("is_query")),
                                          ("document", model.encode_document, texts)):
            vectors = by_id(tmp_path / work, role)
            np.testing.assert_allclose(np.stack([vectors[i] for i in chosen["text_id"]]),
                                       encode_role(chosen["text"].to_list(), normalize_embeddings=True), atol=1e-5)
    assert json.loads((tmp_path / "named" / workdir.EMBED_PLAN).read_text())["settings"]["query_prompt"] == "good query "
    capsys.readouterr()
    assert run_stage(embed, *common, "--work", tmp_path / "bad", "--document-prompt-name", "passage") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert err == ["error: --document-prompt-name 'passage': the model has no prompt of that name "
                   "(its prompts: query, document, search)"]
    assert not (tmp_path / "bad").exists()


def test_search_and_masks_use_query_role_against_document_role(roles):
    work = roles / "w"
    query, document = by_id(work, "query"), by_id(work, "document")
    texts = pl.read_parquet(work / workdir.TEXTS)
    pool = texts.filter(pl.col("is_document") | pl.col("is_query"))["text_id"].to_numpy()  # --include-queries
    pool_vectors = np.stack([document[i] for i in pool])
    anchors = pl.read_parquet(work / workdir.ANCHORS)
    positives_of = anchors.group_by("query_id").agg("positive_id").rows_by_key("query_id", unique=True)
    candidates = pl.read_parquet(work / workdir.CANDIDATES / "*.parquet").sort("anchor_id")
    mined = pl.read_parquet(work / workdir.MINED / "*.parquet").sort("anchor_id")
    for row, chosen in zip(candidates.iter_rows(named=True), mined.iter_rows(named=True)):
        q = query[row["query_id"]]
        scores = pool_vectors @ q
        excluded = {row["query_id"], *positives_of[row["query_id"]][0]}
        order = [i for i in np.argsort(-scores, kind="stable") if pool[i] not in excluded][:10]
        assert row["candidate_ids"] == pool[order].tolist()
        np.testing.assert_allclose(row["candidate_scores"], scores[order], atol=1e-5)
        positive = float(q @ document[row["positive_id"]])
        assert row["positive_score"] == pytest.approx(positive, abs=1e-5)
        np.testing.assert_allclose(row["given_negative_scores"],
                                   [float(q @ document[g]) for g in row["given_negative_ids"]], atol=1e-5)
        # absolute margin 0: a candidate scoring above the positive is a false negative
        flagged = {pool[i] for i in order if scores[i] > positive + 1e-5}
        unsure = {pool[i] for i in order if abs(scores[i] - positive) <= 1e-5}
        assert flagged <= set(chosen["false_negative_ids"]) <= flagged | unsure | set(row["given_negative_ids"])


def test_guide_blocks_use_each_columns_role(roles):
    work = roles / "w"
    data = TrainingData(work, 2, "cpu")
    batch = data.get_batch(list(range(8)))
    for column, role in (("queries", "query"), ("positives", "document"), ("negatives", "document")):
        vectors = by_id(work, role)
        expected = np.stack([vectors[i] for i in batch.ids[column].tolist()])
        torch.testing.assert_close(batch.guide[column], torch.from_numpy(expected).half())


@pytest.mark.parametrize("mini_batch", [0, 5])  # whole columns, and GradCache's mini-batches within each column
def test_student_applies_and_saves_its_prompts(roles, tmp_path, mini_batch):
    student = build_tiny_model(tmp_path / "student", seed=3, dropout=0.0)  # no dropout: the loss is a function
    split = eval_split(tmp_path, pl.read_parquet(roles / "pairs.parquet").head(12))
    argv = ["--work", roles / "w", "--student", student, "--max-steps", 1, "--batch-size", 8, "--query-prompt", QUERY,
            "--document-prompt", DOCUMENT, "--mini-batch-size", mini_batch, "--eval", split]
    assert run_stage(train_command, *argv, "--out", tmp_path / "out") == 0
    # the first step's loss, from the student's vectors of prompt + text as sentence-transformers computes them
    config = train_command.config_from(train_command.build_parser().parse_args([str(a) for a in [*argv, "--out", tmp_path / "out"]]))
    data = TrainingData(roles / "w", config.negatives_per_anchor, "cpu")
    batch = data.get_batch(epoch_batches(data, config, 1, 0)[0])
    base = encoder(student)
    with torch.no_grad():
        vectors = {c: base.encode([(QUERY if c == "queries" else DOCUMENT) + t for t in batch.texts[c]],
                                  convert_to_tensor=True) for c in COLUMNS}
        oracle = GISTLoss(config.temperature, config.in_batch_margin_strategy,
                          config.in_batch_margin)(batch.with_student(vectors))[0].item()
    logged = [json.loads(line) for line in (tmp_path / "out" / workdir.METRICS).read_text().splitlines()]
    assert [m["loss"] for m in logged if "loss" in m][0] == pytest.approx(oracle, rel=1e-4)
    # the evaluator before training: the base student with the same prompts per role
    evaluator = make_evaluator(split, "eval", {"query": QUERY, "document": DOCUMENT})
    record = json.loads((tmp_path / "out" / workdir.TRAINING_RECORD).read_text())
    assert record["eval_before"] == headline(evaluator(base))
    # the saved model applies them itself
    saved = json.loads((tmp_path / "out" / "config_sentence_transformers.json").read_text())["prompts"]
    assert saved["query"] == QUERY and saved["document"] == DOCUMENT
    trained, texts = encoder(tmp_path / "out"), ["the red car", "a dog sat"]
    np.testing.assert_allclose(trained.encode_query(texts), trained.encode([QUERY + t for t in texts]), atol=1e-6)
    np.testing.assert_allclose(trained.encode_document(texts), trained.encode([DOCUMENT + t for t in texts]), atol=1e-6)


def test_a_changed_prompt_makes_readers_refuse_the_old_state(roles, tiny_guide, tmp_path, capsys):
    shutil.copytree(roles, tmp_path, dirs_exist_ok=True)
    work, old = tmp_path / "w", tmp_path / "old"
    shutil.copytree(work, old)
    plan = json.loads((work / workdir.EMBED_PLAN).read_text())
    argv = ["--input", tmp_path / "pairs.parquet", "--corpus", tmp_path / "corpus.parquet", "--work", work,
            "--guide", tiny_guide, "--texts-per-shard", 30, "--query-prompt", "good " + QUERY, "--document-prompt", DOCUMENT]
    assert run_stage(embed, *argv) == 2
    assert "different settings" in capsys.readouterr().err
    assert run_stage(embed, *argv, "--overwrite") == 0
    assert json.loads((work / workdir.EMBED_PLAN).read_text())["fingerprint"] != plan["fingerprint"]
    for name in (workdir.SEARCH_PLAN, workdir.MINE_PLAN, workdir.CANDIDATES, workdir.MINED,
                 workdir.CANDIDATES_MANIFEST, workdir.MINED_MANIFEST, workdir.SUMMARY):
        (shutil.copytree if (old / name).is_dir() else shutil.copy)(old / name, work / name)
    for command in ((train_command, "--work", work, "--out", tmp_path / "m"), (mask, "--work", work, "--refilter")):
        assert run_stage(*command) == 2
        assert f"{work / workdir.CANDIDATES_MANIFEST} is stale" in capsys.readouterr().err
