"""Data as users have it: sentence-transformers' column names recognised, --columns, folders and globs of files."""

from __future__ import annotations

import polars as pl
import pytest
from conftest import run_module

from gist_mining import planning, workdir
from gist_mining.errors import InputError, UsageError
from gist_mining.inputs import pair_batches, parse_columns


def read_frame(frame: pl.DataFrame, folder, columns=None) -> pl.DataFrame:
    """``frame`` written as pairs.parquet in ``folder`` and read back as pairs."""
    frame.write_parquet(folder / "pairs.parquet")
    return pl.concat(list(pair_batches(folder / "pairs.parquet", columns)))


CONVENTIONS = [
    ({"anchor": ["a1", "a2"], "positive": ["p1", "p2"], "negative": ["n1", None]},
     "'anchor' as query, 'positive' as positive, 'negative' as negative", [["n1"], []]),
    ({"anchor": ["a1", "a2"], "positive": ["p1", "p2"], "negative_2": ["m1", "m2"], "negative_1": ["n1", None],
      "negative_10": ["o1", "o2"]},
     "'anchor' as query, 'positive' as positive, 'negative_1' + 'negative_2' + 'negative_10' as negative",
     [["n1", "m1", "o1"], ["m2", "o2"]]),
    ({"query": ["a1", "a2"], "positive": ["p1", "p2"], "negatives": [["n1", "m1"], []]},
     "'query' as query, 'positive' as positive, 'negatives' as negative", [["n1", "m1"], []]),
    ({"query": ["a1", "a2"], "answer": ["p1", "p2"]}, "'query' as query, 'answer' as positive", [[], []]),
    ({"question": ["a1", "a2"], "answer": ["p1", "p2"], "id": [1, 2]}, "'question' as query, 'answer' as positive",
     [[], []]),
    ({"sentence1": ["a1", "a2"], "sentence2": ["p1", "p2"], "score": [0.5, 1.0]},
     "'sentence1' as query, 'sentence2' as positive", [[], []]),
]


@pytest.mark.parametrize("columns, log, negatives", CONVENTIONS, ids=[c[1].split(",")[0] for c in CONVENTIONS])
def test_sentence_transformers_conventions_are_recognised_and_said(tmp_path, columns, log, negatives, capsys):
    pairs = read_frame(pl.DataFrame(columns), tmp_path)
    assert pairs.rows() == [("a1", "p1", negatives[0], "default"), ("a2", "p2", negatives[1], "default")]
    planning.read_inputs([tmp_path / "pairs.parquet"], [], tmp_path / "plan")
    assert capsys.readouterr().err.splitlines() == [f"embed: {tmp_path / 'pairs.parquet'}: {log}"]


def test_columns_option_maps_a_users_names(tmp_path, capsys):
    frame = pl.DataFrame({"question": ["a1", "a2"], "answer": ["p1", "p2"], "hard_negative": ["n1", "n2"],
                          "source": ["wiki", None], "query": ["not this", "nor this"]})
    given = parse_columns("query=question, positive=answer,negative=hard_negative,task=source")
    pairs = read_frame(frame, tmp_path, given)
    assert pairs.rows() == [("a1", "p1", ["n1"], "wiki"), ("a2", "p2", ["n2"], "default")]
    planning.read_inputs([tmp_path / "pairs.parquet"], [], tmp_path / "plan", given)
    assert "'question' as query, 'answer' as positive, 'hard_negative' as negative, 'source' as task" in capsys.readouterr().err
    # Only some slots named: the others are recognised around them.
    assert read_frame(frame, tmp_path, {"positive": "answer"})["query"].to_list() == ["not this", "nor this"]


def test_bad_rows_name_the_users_column(tmp_path):
    frame = pl.DataFrame({"anchor": ["a1", "a2"], "positive": ["p1", "p2"], "negative_1": ["n1", "n2"],
                          "negative_2": ["m1", " "]})
    with pytest.raises(InputError) as caught:
        read_frame(frame, tmp_path)
    assert caught.value.problems == [f"{tmp_path / 'pairs.parquet'}: row 2: column 'negative_2' is empty"]


@pytest.mark.parametrize("text, wrong", [("query", "'query'"), ("question=q", "'question=q'"), ("query=", "'query='")])
def test_a_malformed_columns_option_is_a_usage_error(text, wrong):
    with pytest.raises(UsageError, match=f"not {wrong}"):
        parse_columns(text)


def test_columns_option_naming_an_absent_column(tmp_path):
    with pytest.raises(InputError) as caught:
        read_frame(pl.DataFrame({"q": ["a"], "a": ["b"]}), tmp_path, {"query": "question", "positive": "a"})
    assert caught.value.problems == [(f"{tmp_path / 'pairs.parquet'}: --columns takes 'question' as query, but there "
                                      "is no such column (has: q, a)")]


def test_an_input_matching_no_convention_stops_with_one_line_and_writes_nothing(tmp_path):
    path = tmp_path / "odd.jsonl"
    pl.DataFrame({"prompt": ["a"], "completion": ["b"]}).write_ndjson(path)
    result = run_module("pipeline.embed", "--input", path, "--work", tmp_path / "w", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [(
        f"error: {path}: no columns to take as query and positive (has: completion, prompt); expected one of "
        "query/positive, anchor/positive, query/answer, question/answer, sentence1/sentence2, query/pos, or name them with "
        "--columns query=COLUMN,positive=COLUMN")]
    assert not (tmp_path / "w").exists()


def test_folders_and_globs_of_files(tmp_path):
    """Spark's output (part files, _SUCCESS) and a glob plan as the files named one by one."""
    parts = tmp_path / "spark.parquet"
    parts.mkdir()
    frames = [pl.DataFrame({"query": [f"q{i}{j}" for j in range(3)], "positive": [f"p{i}{j}" for j in range(3)]})
              for i in range(3)]
    for i, frame in enumerate(frames):
        frame.write_parquet(parts / f"part-{i:05d}.parquet")
    (parts / "_SUCCESS").write_bytes(b"")
    (parts / ".part-00000.parquet.crc").write_bytes(b"\x00")
    frames[0].write_ndjson(tmp_path / "extra-0.jsonl")
    frames[1].write_ndjson(tmp_path / "extra-1.jsonl")

    def plan(*given):
        planned, records = planning.read_inputs(list(given), [], tmp_path / f"plan-{len(records_seen)}")
        records_seen.append(records)
        return pl.read_parquet(planned.path(workdir.ANCHORS)), records

    records_seen = []
    whole, records = plan(parts, tmp_path / "extra-*.jsonl")
    files = [parts / f"part-{i:05d}.parquet" for i in range(3)] + [tmp_path / f"extra-{i}.jsonl" for i in range(2)]
    assert [r["path"] for r in records] == [str(f) for f in files]
    one_by_one, _ = plan(*files)
    assert whole.equals(one_by_one) and whole["source"].unique(maintain_order=True).to_list() == [str(f) for f in files]
    assert whole["source_row"].to_list() == [1, 2, 3] * 5


@pytest.mark.parametrize("make, expected", [
    (lambda d: (d / "empty").mkdir() or d / "empty", "a directory, but neither a dataset saved with save_to_disk"),
    (lambda d: d / "nothing-*.parquet", "no file matches this pattern"),
], ids=["empty-folder", "glob-without-match"])
def test_folder_or_glob_without_files(tmp_path, make, expected):
    given = make(tmp_path)
    result = run_module("pipeline.embed", "--input", given, "--work", tmp_path / "w", check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() and result.stderr.splitlines()[0].startswith(f"error: {given}: {expected}")
    assert not (tmp_path / "w").exists()


@pytest.mark.slow  # a fresh interpreter
def test_the_embed_stage_takes_columns_and_globs(tmp_path, tiny_model):
    for i in range(2):
        pl.DataFrame({"question": [f"q {i} {j}" for j in range(3)], "answer": [f"a {i} {j}" for j in range(3)],
                      "hard": [f"n {i} {j}" for j in range(3)]}).write_parquet(tmp_path / f"part-{i}.parquet")
    result = run_module("pipeline.embed", "--input", tmp_path / "part-*.parquet", "--columns",
                        "query=question,positive=answer,negative=hard", "--work", tmp_path / "w", "--guide", tiny_model)
    assert f"embed: {tmp_path / 'part-1.parquet'}: 'question' as query, 'answer' as positive, 'hard' as negative" \
        in result.stderr.splitlines()
    texts = dict(pl.read_parquet(tmp_path / "w" / workdir.TEXTS).select("text_id", "text").iter_rows())
    anchors = pl.read_parquet(tmp_path / "w" / workdir.ANCHORS)
    assert [(texts[q], texts[p], [texts[n] for n in ns]) for q, p, ns in
            anchors.select("query_id", "positive_id", "negative_ids").iter_rows()] == [
        (f"q {i} {j}", f"a {i} {j}", [f"n {i} {j}"]) for i in range(2) for j in range(3)]


@pytest.mark.slow  # fresh interpreters
def test_other_columns_or_roles_are_another_plan(tmp_path, tiny_model):
    """The same files read by other columns, or in another role, are other inputs: refused in one line, not resumed
    with the old tables (the files' hashes alone are equal)."""
    pl.DataFrame({"question": ["q 0", "q 1"], "title": ["t 0", "t 1"], "answer": ["a 0", "a 1"]}).write_parquet(
        tmp_path / "pairs.parquet")
    pl.DataFrame({"question": ["q 2"], "title": ["t 2"], "answer": ["a 2"], "text": ["c 2"]}).write_parquet(
        tmp_path / "more.parquet")
    work = ["--work", tmp_path / "w", "--guide", tiny_model]
    pairs = ["--input", tmp_path / "pairs.parquet"]
    first = [*pairs, "--columns", "query=question,positive=answer", "--input", tmp_path / "more.parquet"]
    run_module("pipeline.embed", *first, *work)
    assert run_module("pipeline.embed", *first, *work).returncode == 0  # the same command resumes
    for other in ([*pairs, "--columns", "query=title,positive=answer", "--input", tmp_path / "more.parquet"],
                  [*pairs, "--columns", "query=question,positive=answer", "--corpus", tmp_path / "more.parquet"]):
        result = run_module("pipeline.embed", *other, *work, check=False)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and "different inputs" in errors[0], result.stderr
    run_module("pipeline.embed", *pairs, "--columns", "query=title,positive=answer", "--input",
               tmp_path / "more.parquet", "--overwrite", *work)
    assert set(pl.read_parquet(tmp_path / "w" / workdir.TEXTS)["text"]) == {"t 0", "t 1", "a 0", "a 1", "t 2", "a 2"}
