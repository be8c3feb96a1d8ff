"""The evaluate command and gist_mining.evaluation: a BEIR folder and the bundled layout, NanoBEIR through a fake
Hugging Face cache and MTEB through a task defined here, each scored against a brute-force numpy oracle of NDCG@10,
MRR@10 and Recall@100 over the tiny model's own embeddings; reuse of finished results; bad inputs."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import polars as pl
import pytest
from conftest import build_tiny_model, run_module, run_stage, sentence
from test_inputs_hub import add_dataset, parquet

from gist_mining import evaluation
from gist_mining.evaluation import MTEB, ModelOptions, NanoBEIR, RetrievalFolder, read_split
from gist_mining.evaluation.suites import METRICS
from gist_mining.models import load_model
from gist_mining.training.evaluate import headline, make_evaluator
from pipeline import evaluate as command


def make_retrieval(seed: int, queries: int = 24, documents: int = 130) -> dict:
    """Queries, documents (with titles) and qrels: one to three relevant documents a query, some judged 0 (not
    relevant), and a query without qrels (not scored)."""
    rng = random.Random(seed)
    texts = set()

    def fresh(n: int | None = None) -> str:
        while (text := sentence(rng, n)) in texts:
            pass
        texts.add(text)
        return text

    corpus = [{"_id": f"d{i}", "title": fresh(2) if i % 2 else "", "text": fresh()} for i in range(documents)]
    query_rows = [{"_id": f"q{i}", "text": fresh(), "metadata": {"source": "test"}} for i in range(queries)]
    qrels = []
    for i in range(queries - 1):
        for n, doc in enumerate(rng.sample(range(documents), rng.randint(1, 3))):
            qrels.append({"query-id": f"q{i}", "corpus-id": f"d{doc}", "score": 1})
            if n == 0 and i % 3:  # most queries' first document shares their words: rankings far from chance
                corpus[doc]["text"] = f"{query_rows[i]['text']} {fresh(2)}"
        qrels.append({"query-id": f"q{i}", "corpus-id": f"d{rng.randrange(documents)}", "score": 0})
    return {"corpus": corpus, "queries": query_rows, "qrels": qrels}


def write_beir(folder, data: dict, split: str = "test") -> None:
    """BEIR's own files: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv."""
    (folder / "qrels").mkdir(parents=True)
    for kind in ("corpus", "queries"):
        (folder / f"{kind}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data[kind]))
    (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{r['query-id']}\t{r['corpus-id']}\t{r['score']}\n" for r in data["qrels"]))


def document_text(row: dict) -> str:
    return f"{row['title']} {row['text']}" if row.get("title") else row["text"]


def write_bundled(folder, data: dict) -> None:
    """The bundled sets' layout: queries/corpus/qrels.parquet with query_id, doc_id."""
    folder.mkdir(parents=True)
    pl.DataFrame({"query_id": [r["_id"] for r in data["queries"]], "text": [r["text"] for r in data["queries"]]}
                 ).write_parquet(folder / "queries.parquet")
    pl.DataFrame({"doc_id": [r["_id"] for r in data["corpus"]], "text": [document_text(r) for r in data["corpus"]]}
                 ).write_parquet(folder / "corpus.parquet")
    pl.DataFrame({"query_id": [r["query-id"] for r in data["qrels"]], "doc_id": [r["corpus-id"] for r in data["qrels"]],
                  "score": [r["score"] for r in data["qrels"]]}).write_parquet(folder / "qrels.parquet")


def oracle(model, data: dict, titles: bool = True, prompts: dict | None = None) -> dict:
    """NDCG@10, MRR@10 and Recall@100 by brute force: cosine scores of every query against every document, the
    documents sorted by score, binary relevance (qrels above 0), averaged over the queries that have any.
    ``prompts``: the text put before each role's texts (else the model's own, encode_query's)."""
    relevant: dict[str, set] = {}
    for r in data["qrels"]:
        if r["score"] > 0:
            relevant.setdefault(r["query-id"], set()).add(r["corpus-id"])
    queries = [q for q in data["queries"] if q["_id"] in relevant]
    documents = [document_text(r) if titles else r["text"] for r in data["corpus"]]
    if prompts:
        q = model.encode([prompts["query"] + r["text"] for r in queries], convert_to_numpy=True)
        d = model.encode([prompts["document"] + text for text in documents], convert_to_numpy=True)
    else:
        q = model.encode_query([r["text"] for r in queries], convert_to_numpy=True)
        d = model.encode_document(documents, convert_to_numpy=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ids = np.array([r["_id"] for r in data["corpus"]])
    found = {m: [] for m in METRICS}
    for row, query in zip(q @ d.T, queries):
        hits = np.array([i in relevant[query["_id"]] for i in ids[np.argsort(-row, kind="stable")]])
        gains = 1 / np.log2(np.arange(2, 12))
        found["ndcg@10"].append((hits[:10] * gains).sum() / gains[:min(hits.sum(), 10)].sum())
        first = np.flatnonzero(hits[:10])
        found["mrr@10"].append(1 / (first[0] + 1) if first.size else 0.0)
        found["recall@100"].append(hits[:100].sum() / hits.sum())
    return {m: float(np.mean(v)) for m, v in found.items()}


@pytest.fixture(scope="module")
def data() -> dict:
    return make_retrieval(seed=3)


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model), device="cpu")


def scores_of(table: pl.DataFrame, **where) -> dict:
    (row,) = table.filter(**where).select(*METRICS, "main_score").to_dicts()
    return row


def test_a_beir_folder_and_the_bundled_layout_score_as_the_oracle(tmp_path, data, model, tiny_model):
    write_beir(tmp_path / "beir", data)
    write_bundled(tmp_path / "bundled", data)
    expected = oracle(model, data)
    assert 0.05 < expected["ndcg@10"] < 0.95  # neither trivial nor hopeless: the oracle can tell rankings apart
    beir, bundled = read_split(tmp_path / "beir"), read_split(tmp_path / "bundled")
    assert (beir.queries, beir.corpus, beir.relevant) == (bundled.queries, bundled.corpus, bundled.relevant)
    assert len(beir.relevant) == 23 and "q23" in beir.queries  # the query without qrels is read, not scored

    table = evaluation.evaluate({"tiny": str(tiny_model)}, [RetrievalFolder(tmp_path / "beir"),
                                                            RetrievalFolder(tmp_path / "bundled")], tmp_path / "out")
    for task in ("beir", "bundled"):
        got = scores_of(table, task=task)
        assert got["main_score"] == got["ndcg@10"]
        assert {m: got[m] for m in METRICS} == pytest.approx(expected, abs=1e-6)
    # train.run --eval takes either layout through the same reader
    for folder in ("beir", "bundled"):
        assert headline(make_evaluator(tmp_path / folder, "eval")(model)) == {
            m: round(v, 4) for m, v in expected.items()}
    assert (tmp_path / "out" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pl.read_parquet(tmp_path / "out" / "results.parquet").equals(table)
    markdown = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert markdown[0] == "| model | suite | task | ndcg@10 | mrr@10 | recall@100 | main_score |"
    assert markdown[2].startswith(f"| tiny | beir | beir | {expected['ndcg@10']:.4f} | {expected['mrr@10']:.4f} |")


def test_a_rerun_reuses_finished_results_and_a_changed_model_is_scored_again(tmp_path, data, tiny_model, monkeypatch):
    write_beir(tmp_path / "beir", data)
    suites = [RetrievalFolder(tmp_path / "beir")]
    first = evaluation.evaluate([str(tiny_model)], suites, tmp_path / "out")
    kept = sorted((tmp_path / "out" / "results").rglob("*.json"))
    assert len(kept) == 1

    def no_scoring(*args, **kwargs):
        raise AssertionError("a finished result was scored again")

    monkeypatch.setattr(RetrievalFolder, "score", no_scoring)
    assert evaluation.evaluate([str(tiny_model)], suites, tmp_path / "out").equals(first)
    other = build_tiny_model(tmp_path / "other", seed=5)
    with pytest.raises(AssertionError, match="scored again"):  # other weights: not reused
        evaluation.evaluate([str(other)], suites, tmp_path / "out")
    with pytest.raises(AssertionError, match="scored again"):  # other prompts: not reused
        evaluation.evaluate([str(tiny_model)], suites, tmp_path / "out",
                            ModelOptions(prompts=evaluation.run.Prompts(query_prompt="query: ")))


NANO = {"scifact": 5, "nfcorpus": 6}  # NanoBEIR data sets made here, and their seeds
NANO_CARD = "---\nconfigs:\n" + "".join(
    f"- config_name: {subset}\n  data_files:\n" + "".join(
        f"  - split: {split}\n    path: {subset}/{split}-*\n" for split in ("NanoSciFact", "NanoNFCorpus"))
    for subset in ("corpus", "queries", "qrels")) + "---\n"


@pytest.fixture
def nanobeir_cache(tmp_path, monkeypatch) -> dict:
    """sentence-transformers/NanoBEIR-en in a fake Hugging Face cache, offline (tests/test_inputs_hub.py's layout)."""
    from huggingface_hub import constants

    made, files = {}, {"README.md": NANO_CARD.encode()}
    for name, split in (("scifact", "NanoSciFact"), ("nfcorpus", "NanoNFCorpus")):
        made[name] = make_retrieval(NANO[name], queries=12, documents=40)
        # as the Hub's copy: no titles, and only the relevant qrels, without scores (NanoBEIREvaluator reads none)
        made[name]["qrels"] = [r for r in made[name]["qrels"] if r["score"] > 0]
        for kind in ("corpus", "queries", "qrels"):
            rows = [{k: v for k, v in r.items() if k not in ("title", "metadata", "score")} for r in made[name][kind]]
            files[f"{kind}/{split}-00000-of-00001.parquet"] = parquet(pl.DataFrame(rows))
    add_dataset(tmp_path / "hf" / "hub", "sentence-transformers/NanoBEIR-en", "e" * 40, files, ref="main")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return made


def test_nanobeir_from_the_cache_scores_as_the_oracle(tmp_path, nanobeir_cache, model, tiny_model):
    suite = NanoBEIR(["SciFact", "nfcorpus"])
    table = evaluation.evaluate([str(tiny_model)], [suite], tmp_path / "out")
    assert table["task"].to_list() == ["NanoSciFact", "NanoNFCorpus", "mean"]
    expected = {name: oracle(model, made, titles=False) for name, made in nanobeir_cache.items()}
    assert {m: scores_of(table, task="NanoSciFact")[m] for m in METRICS} == pytest.approx(expected["scifact"], abs=1e-6)
    assert {m: scores_of(table, task="NanoNFCorpus")[m] for m in METRICS} == pytest.approx(expected["nfcorpus"], abs=1e-6)
    mean = scores_of(table, task="mean")  # NanoBEIREvaluator's own NanoBEIR_mean
    assert mean["ndcg@10"] == pytest.approx((expected["scifact"]["ndcg@10"] + expected["nfcorpus"]["ndcg@10"]) / 2, abs=1e-6)


def test_nanobeir_neither_cached_nor_reachable_is_one_line_with_the_download(tmp_path, nanobeir_cache, tiny_model, capsys):
    assert run_stage(command, tiny_model, "--nanobeir", "scifact", "--nanobeir-dataset", "acme/NanoBEIR-xx",
                     "--out", tmp_path / "out") == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: acme/NanoBEIR-xx: a Hub dataset neither in the Hugging Face cache nor reachable")
    assert "hf download acme/NanoBEIR-xx --repo-type dataset" in line and not (tmp_path / "out").exists()


def local_mteb_task(data: dict):
    """A retrieval task of MTEB's own kind (AbsTaskRetrieval) with the test's data; counts its loads."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    class LocalRetrieval(AbsTaskRetrieval):
        loads = 0
        metadata = TaskMetadata(
            name="LocalRetrieval", description="Built in the test.", reference="https://example.org",
            dataset={"path": "local/retrieval", "revision": "1"}, type="Retrieval", category="t2t",
            eval_splits=["test"], eval_langs=["eng-Latn"], main_score="ndcg_at_10", date=("2026-01-01", "2026-01-01"),
            domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived", dialect=[],
            modalities=["text"], sample_creation="found", bibtex_citation="")

        def load_data(self, num_proc=None, **kwargs):
            type(self).loads += 1
            relevant = {}
            for r in data["qrels"]:
                relevant.setdefault(r["query-id"], {})[r["corpus-id"]] = r["score"]
            split = RetrievalSplitData(
                queries=Dataset.from_list([{"id": r["_id"], "text": r["text"]} for r in data["queries"]
                                           if r["_id"] in relevant]),
                corpus=Dataset.from_list([{"id": r["_id"], "title": r["title"], "text": r["text"]}
                                          for r in data["corpus"]]),
                relevant_docs=relevant, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return LocalRetrieval()


def test_mteb_on_a_local_task_scores_as_the_oracle_and_reuses_its_cache(tmp_path, data, model, tiny_model):
    pytest.importorskip("mteb")
    task = local_mteb_task(data)
    table = evaluation.evaluate([str(tiny_model)], [MTEB([task])], tmp_path / "out")
    got = scores_of(table, suite="mteb", task="LocalRetrieval")
    assert {m: got[m] for m in METRICS} == pytest.approx(oracle(model, data), abs=1e-5)
    assert got["main_score"] == pytest.approx(got["ndcg@10"])
    assert type(task).loads == 1
    again = evaluation.evaluate([str(tiny_model)], [MTEB([task])], tmp_path / "out")
    assert type(task).loads == 1 and again.equals(table)  # mteb's ResultCache served it


def test_prompts_per_role_reach_every_suite(tmp_path, data, model, tiny_model):
    """--query-prompt/--document-prompt: the folder's evaluator and MTEB (as its query/document prompts) put them
    before each role's texts, as the oracle does."""
    pytest.importorskip("mteb")
    write_beir(tmp_path / "beir", data)
    given = {"query": "query: the ", "document": "passage: a "}
    options = ModelOptions(prompts=evaluation.run.Prompts(query_prompt=given["query"], document_prompt=given["document"]))
    table = evaluation.evaluate([str(tiny_model)], [RetrievalFolder(tmp_path / "beir"), MTEB([local_mteb_task(data)])],
                                tmp_path / "out", options)
    expected = oracle(model, data, prompts=given)
    assert expected != pytest.approx(oracle(model, data), abs=1e-3)  # the prompts change the scores
    for suite in ("beir", "mteb"):
        got = scores_of(table, suite=suite)
        assert {m: got[m] for m in METRICS} == pytest.approx(expected, abs=1e-5)


def test_bad_inputs_are_one_line_exit_2_and_nothing_written(tmp_path, data, tiny_model, capsys, monkeypatch):
    good = tmp_path / "good"
    write_beir(good, data)
    bad = tmp_path / "bad"
    write_beir(bad, {**data, "qrels": data["qrels"] + [{"query-id": "q1", "corpus-id": "nowhere", "score": 1}]})
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in tiny_model.rglob("*"):
        if file.is_file():
            target = broken / file.relative_to(tiny_model)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"not weights" if file.suffix == ".safetensors" else file.read_bytes())
    cases = [
        (["no/such-model-here", "--beir", good], "model 'no/such-model-here'"),
        ([broken, "--beir", good], f"model '{broken}' does not load"),
        ([tiny_model, "--beir", bad], f"{bad / 'qrels' / 'test.tsv'}: row {len(data['qrels']) + 1}: corpus-id 'nowhere' "
                                      f"is not in {bad / 'corpus.jsonl'}"),
        ([tiny_model, "--beir", good, "--split", "dev"], f"{good / 'qrels'}: no split 'dev' (has: test)"),
        ([tiny_model, "--nanobeir", "scifact", "nosuchset"], "--nanobeir nosuchset: not a NanoBEIR data set"),
        ([tiny_model, "--mteb", "NoSuchTask"], "--mteb NoSuchTask: neither an MTEB task nor an MTEB benchmark"),
        ([tiny_model], "nothing to score on"),
    ]
    for args, expected in cases:
        assert run_stage(command, *args, "--out", tmp_path / "out") == 2, expected
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("error: ") and expected in line, line
        assert not (tmp_path / "out").exists()
    monkeypatch.setitem(sys.modules, "mteb", None)  # not installed
    assert run_stage(command, tiny_model, "--mteb", "SciFact", "--out", tmp_path / "out") == 2
    assert capsys.readouterr().err.strip() == "error: --mteb needs the mteb package: pip install 'gist-mining[eval]'"


@pytest.mark.slow  # two models
def test_the_command_writes_the_table_of_several_models(tmp_path, data, tiny_model, capsys):
    write_beir(tmp_path / "beir", data)
    other = build_tiny_model(tmp_path / "other", seed=5)
    assert run_stage(command, tiny_model, other, "--beir", tmp_path / "beir", "--out", tmp_path / "out") == 0
    table = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert table.select("model", "suite", "task").rows() == [(str(tiny_model), "beir", "beir"), (str(other), "beir", "beir")]
    assert capsys.readouterr().out == (tmp_path / "out" / "results.md").read_text()
    assert table["ndcg@10"][0] != table["ndcg@10"][1]


def test_the_trainer_evaluator_helpers_serve_sentence_transformers(tmp_path, data, model, nanobeir_cache):
    write_beir(tmp_path / "beir", data)
    folder = RetrievalFolder(tmp_path / "beir", task="held")
    metrics = folder.evaluator()(model)
    assert metrics["held_cosine_ndcg@10"] == pytest.approx(oracle(model, data)["ndcg@10"], abs=1e-6)
    nano = NanoBEIR(["scifact"]).evaluator()
    assert nano(model)["NanoBEIR_mean_cosine_ndcg@10"] == pytest.approx(
        oracle(model, nanobeir_cache["scifact"], titles=False)["ndcg@10"], abs=1e-6)


@pytest.mark.slow  # a fresh interpreter with mteb
def test_an_mteb_task_neither_cached_nor_reachable_is_one_line(tmp_path, tiny_model, monkeypatch):
    pytest.importorskip("mteb")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    result = run_module("pipeline.evaluate", tiny_model, "--mteb", "SciFact", "--out", tmp_path / "out", check=False)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if "error" in line.lower()]  # besides progress bars
    assert line.startswith("error: --mteb SciFact: its data set mteb/scifact (revision ")
    assert "neither in the Hugging Face cache nor reachable" in line and not (tmp_path / "out").exists()


@pytest.mark.slow  # a training run
def test_sentence_transformers_trainer_logs_the_folder_score_every_n_steps(tmp_path, data, tiny_model):
    """RetrievalFolder.evaluator() as SentenceTransformerTrainer's evaluator=, scored every eval_steps."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    write_beir(tmp_path / "beir", data)
    student = load_model(str(tiny_model), device="cpu")
    pairs = Dataset.from_dict({"anchor": [q["text"] for q in data["queries"][:16]],
                               "positive": [d["text"] for d in data["corpus"][:16]]})
    args = SentenceTransformerTrainingArguments(tmp_path / "st", per_device_train_batch_size=8, max_steps=2,
                                                eval_strategy="steps", eval_steps=1, logging_steps=1, report_to=[],
                                                use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=student, args=args, train_dataset=pairs,
                                         loss=MultipleNegativesRankingLoss(student),
                                         evaluator=RetrievalFolder(tmp_path / "beir", task="held").evaluator())
    trainer.train()
    logged = [(r["step"], r["eval_held_cosine_ndcg@10"]) for r in trainer.state.log_history if "eval_held_cosine_ndcg@10" in r]
    assert [step for step, _ in logged] == [1, 2]
    assert logged[-1][1] == pytest.approx(oracle(student, data)["ndcg@10"], abs=1e-6)  # the trained weights' score


def test_model_options_are_model_settings_less_the_name():
    """Every model of an evaluation loads as ModelSettings would, from the same options (pipeline.evaluate parses
    ModelSettings' options into ModelOptions)."""
    from dataclasses import fields

    from gist_mining.models import ModelSettings

    loading = {f.name: f.default for f in fields(ModelSettings) if f.name != "name"}
    assert {f.name: f.default for f in fields(ModelOptions) if f.name != "prompts"} == loading
    options = ModelOptions(revision="r", trust_remote_code=True, device="cpu", max_seq_length=9)
    assert options.settings("m") == ModelSettings("m", "r", True, "cpu", 9)
