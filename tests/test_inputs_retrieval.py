"""A retrieval layout as BEIR and MTEB lay it out (--queries, --corpus, --qrels): each relevant qrel is a pair, the
corpus is the pool, a query may have several positives; its bad rows are named by file and row."""

from __future__ import annotations

import json

import polars as pl
import pytest
from conftest import run_module

from gist_mining import planning, workdir
from gist_mining.errors import InputError

CORPUS = [{"_id": "d1", "title": "Banks", "text": "a bank holds money"},
          {"_id": "d2", "title": "", "text": "a river bank is land"},
          {"_id": 3, "title": "Fish", "text": "fish swim in rivers"},
          {"_id": "d4", "title": "Loans", "text": "a loan is money lent"}]
QUERIES = [{"_id": "q1", "text": "what is a bank"}, {"_id": 7, "text": "where do fish live"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\t2\n7\t3\t1\nq1\td4\t0\n"


def write_beir(folder, corpus=CORPUS, queries=QUERIES, qrels=QRELS):
    folder.mkdir(exist_ok=True)
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / "train.tsv").write_text(qrels)
    return folder / "queries.jsonl", folder / "corpus.jsonl", folder / "qrels" / "train.tsv"


def test_qrels_become_pairs_and_the_corpus_the_pool(tmp_path):
    layout = write_beir(tmp_path / "beir")
    planned, records = planning.read_inputs([], [], tmp_path / "plan", retrieval=layout)
    texts = pl.read_parquet(planned.path(workdir.TEXTS))
    text_of = dict(texts.select("text_id", "text").iter_rows())
    anchors = pl.read_parquet(planned.path(workdir.ANCHORS))
    got = [(text_of[q], text_of[p], source, row) for q, p, source, row in
           anchors.select("query_id", "positive_id", "source", "source_row").iter_rows()]
    qrels = str(layout[2])
    assert got == [("what is a bank", "Banks a bank holds money", qrels, 1),
                   ("what is a bank", "a river bank is land", qrels, 2),  # a blank title adds nothing
                   ("where do fish live", "Fish fish swim in rivers", qrels, 3)]  # ids written as numbers match
    documents = set(texts.filter("is_document")["text"])
    assert documents == {"Banks a bank holds money", "a river bank is land", "Fish fish swim in rivers",
                         "Loans a loan is money lent"}  # a qrel scoring 0 is no pair, its document still in the pool
    assert set(texts.filter("is_query")["text"]) == {"what is a bank", "where do fish live"}
    assert [r["kind"] for r in records] == ["queries", "corpus", "qrels"]


@pytest.mark.parametrize("change, expected", [
    ({"qrels": QRELS + "q1\td9\t1\n"}, ("qrels/train.tsv", "row 5: corpus-id 'd9' is not in")),
    ({"qrels": QRELS + "q8\td1\t1\n"}, ("qrels/train.tsv", "row 5: query-id 'q8' is not in")),
    ({"qrels": QRELS.replace("\t2\n", "\ttwo\n")}, ("qrels/train.tsv", "row 2: column 'score' is 'two', expected a number")),
    ({"corpus": CORPUS + [{"_id": "d1", "text": "again"}]}, ("corpus.jsonl", "row 5: _id 'd1' is given to an earlier row too")),
    ({"corpus": CORPUS[:1] + [{"_id": "d2", "title": "x", "text": " "}]}, ("corpus.jsonl", "row 2: column 'text' is empty")),
    ({"queries": [{"id": "q1", "text": "what"}]}, ("queries.jsonl", "missing column '_id' (has: id, text); a queries file")),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td4\t0\n"}, ("qrels/train.tsv", "no qrel scores above 0")),
], ids=["unknown-document", "unknown-query", "bad-score", "repeated-id", "empty-text", "missing-column", "no-pairs"])
def test_bad_layouts_name_file_and_row_and_write_nothing(tmp_path, change, expected):
    queries, corpus, qrels = write_beir(tmp_path / "beir", **change)
    result = run_module("pipeline.embed", "--queries", queries, "--corpus", corpus, "--qrels", qrels,
                        "--work", tmp_path / "w", check=False)
    assert result.returncode == 2, result.stderr
    name, what = expected
    assert result.stderr.splitlines() and all(line.startswith("error: ") for line in result.stderr.splitlines())
    assert any(line.startswith(f"error: {tmp_path / 'beir' / name}: {what}") for line in result.stderr.splitlines()), \
        result.stderr
    assert not (tmp_path / "w").exists()
    if "repeated" in what:  # the first row of an id is not named, the later ones are
        assert sum("is given to an earlier row" in line for line in result.stderr.splitlines()) == 1


def test_a_layout_needs_all_three(tmp_path):
    queries, corpus, _ = write_beir(tmp_path / "beir")
    result = run_module("pipeline.embed", "--queries", queries, "--corpus", corpus, "--work", tmp_path / "w", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: a retrieval layout takes --queries, --qrels and one --corpus together"]
    with pytest.raises(InputError):
        planning.read_inputs([], [], tmp_path / "plan", retrieval=(queries, corpus, tmp_path / "nope.tsv"))
