"""Bad and odd inputs: each problem one line naming the file, the row and what is wrong; odd but valid
inputs read as written. Fixtures live in tests/bad_inputs/ (binary ones made by tests/make_bad_inputs.py);
the few that cannot be committed (a 1 MB text, an unreadable file) are made here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from conftest import read_corpus, read_pairs, run_module

from gist_mining import inputs
from gist_mining.errors import InputError

BAD = Path(__file__).resolve().parent / "bad_inputs"

# fixture, reader, what one of its problems says after "{path}: "
BAD_CASES = [
    # wrong types
    ("wrong_type_query.jsonl", read_pairs, "row 2: column 'query' is int, expected a string"),
    ("object_positive.jsonl", read_pairs, "row 1: column 'positive' is dict, expected a string"),
    ("nan_positive.jsonl", read_pairs, "row 1: column 'positive' is float, expected a string"),
    ("bool_task.jsonl", read_pairs, "row 1: column 'task' is bool, expected a string"),
    ("int_query.parquet", read_pairs, "row 2: column 'query' is int, expected a string"),
    ("binary_query.parquet", read_pairs, "row 1: column 'query' is bytes, expected a string"),
    ("corpus_number_text.jsonl", read_corpus, "row 3: column 'text' is float, expected a string"),
    ("not_an_object.jsonl", read_pairs, "row 2: expected a JSON object, got list"),
    # nulls, empty, whitespace-only and invisible-only texts
    ("null_query.jsonl", read_pairs, "row 3: column 'query' is null"),
    ("missing_key.jsonl", read_pairs, "row 2: column 'positive' is null"),
    ("null_positive.parquet", read_pairs, "row 2: column 'positive' is null"),
    ("dataset_null_query", read_pairs, "row 2: column 'query' is null"),
    ("empty_field.csv", read_pairs, "row 2: column 'query' is null"),
    ("empty_positive.jsonl", read_pairs, "row 2: column 'positive' is empty"),
    ("positive_equals_query.jsonl", read_pairs, "row 3: column 'positive' equals column 'query' (a positive must "
                                                "differ from its query)"),
    ("whitespace_query.jsonl", read_pairs, "row 1: column 'query' is empty"),
    ("whitespace.csv", read_pairs, "row 1: column 'positive' is empty"),
    ("invisible_query.jsonl", read_pairs, "row 2: column 'query' is empty"),
    ("empty_task.jsonl", read_pairs, "row 2: column 'task' is empty"),
    ("corpus_empty_text.jsonl", read_corpus, "row 2: column 'text' is empty"),
    # text that is not text
    ("invalid_utf8.jsonl", read_pairs, "row 2: not valid UTF-8 (byte 0xff"),
    ("invalid_utf8.csv", read_pairs, "row 2 (line 3): column 'positive' is not valid UTF-8 (byte 0xe9)"),
    ("unpaired_surrogate.jsonl", read_pairs, "row 1: column 'query' is invalid Unicode (an unpaired surrogate \\ud83d)"),
    # negatives
    ("negative_list_null.jsonl", read_pairs, "row 1: column 'negative' holds a null"),
    ("negative_list_null.parquet", read_pairs, "row 2: column 'negative' holds a null"),
    ("negative_list_number.jsonl", read_pairs, "row 2: column 'negative' holds int, expected a string"),
    ("negative_list_int.parquet", read_pairs, "row 1: column 'negative' holds int, expected a string"),
    ("negative_nested_list.jsonl", read_pairs, "row 1: column 'negative' holds list, expected a string"),
    ("negative_number.jsonl", read_pairs, "row 1: column 'negative' is int, expected a string or a list of strings"),
    ("negative_written_list.csv", read_pairs, "row 2: column 'negative' is a list written as one string"),
    ("negative_list_written_python.tsv", read_pairs, "row 1: column 'negative' is a list written as one string"),
    # truncated and broken files
    ("truncated.jsonl", read_pairs, "row 3: not valid JSON at column 34"),
    ("truncated.parquet", read_pairs, "unreadable: truncated Parquet file"),
    ("corrupt.parquet", read_pairs, "unreadable: corrupt Parquet file"),
    ("not_parquet.parquet", read_pairs, "unreadable: not a Parquet file"),
    ("json_array.json", read_pairs, "a JSON array; expected JSON Lines"),
    ("blank_lines.jsonl", read_pairs, "row 3 (line 4): not valid JSON"),
    ("broken_quote.csv", read_pairs, "row 2 (line 3): broken quoting"),
    ("unclosed_quote.csv", read_pairs, "row 2 (line 3): a quoted field is still open at the end of the file"),
    ("extra_field.csv", read_pairs, "row 2 (line 3): 3 field(s), the header has 2"),
    ("duplicate_header.csv", read_pairs, "the header names column(s) 'query' more than once"),
    ("rows_after_newlines.csv", read_pairs, "row 3: column 'query' is null"),  # rows 1 and 2 span five lines
    # missing columns, no rows, wrong kind of path
    ("no_header.csv", read_pairs, ("no columns to take as query and positive (has: what is a bank, a place for money); "
                                   "expected one of query/positive, anchor/positive,")),
    ("corpus_missing_text.parquet", read_corpus, "missing column 'text' (has: body); name it with --columns text=COLUMN"),
    ("dataset_wrong_columns", read_pairs, "no columns to take as query and positive (has: text, label)"),
    ("dataset_dict", read_pairs, "a DatasetDict; pass one split's directory (train, test)"),
    ("spark_output.parquet", read_pairs, "a directory, but not a dataset saved with save_to_disk"),
    ("empty.jsonl", read_pairs, "empty file"),
    ("only_blank_lines.jsonl", read_pairs, "no rows"),
    ("header_only.csv", read_pairs, "no rows"),
    ("no_rows.parquet", read_pairs, "no rows"),
    ("unknown_format.txt", read_pairs, "unknown format '.txt'"),
    ("too_many_problems.jsonl", read_pairs, "5 more problem(s) not shown"),
]
ACCEPTED = {"ok_duplicate_rows.jsonl", "ok_embedded_newlines.csv", "ok_mixed_negative.jsonl"}


def problems_of(reader, path) -> list[str]:
    with pytest.raises(InputError) as caught:
        reader(path)
    return caught.value.problems


def assert_reported(problems: list[str], path: Path, expected: str) -> None:
    assert problems and all("\n" not in p and p.startswith(f"{path}: ") for p in problems), problems
    assert any(p.startswith(f"{path}: {expected}") for p in problems), problems


def test_every_fixture_is_checked():
    assert {p.name for p in BAD.iterdir()} == {name for name, _, _ in BAD_CASES} | ACCEPTED
    assert len(BAD_CASES) >= 30


@pytest.mark.parametrize("name, reader, expected", BAD_CASES, ids=[name for name, _, _ in BAD_CASES])
def test_bad_input_is_one_line_per_problem_naming_file_and_row(name, reader, expected):
    assert_reported(problems_of(reader, BAD / name), BAD / name, expected)


def test_problems_are_capped_and_counted():
    problems = problems_of(read_pairs, BAD / "too_many_problems.jsonl")
    assert len(problems) == inputs.MAX_PROBLEMS + 1 and problems[-2].startswith(f"{BAD}/too_many_problems.jsonl: row 20: ")


def test_missing_file(tmp_path):
    assert_reported(problems_of(read_pairs, tmp_path / "nope.jsonl"), tmp_path / "nope.jsonl", "no such file or directory")


def test_damaged_dataset_directory(tmp_path):
    damaged = shutil.copytree(BAD / "dataset_null_query", tmp_path / "damaged")
    for arrow in damaged.glob("*.arrow"):
        arrow.unlink()
    assert_reported(problems_of(read_pairs, damaged), damaged, "unreadable: damaged dataset")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_unreadable_file(tmp_path):
    path = shutil.copy(BAD / "ok_duplicate_rows.jsonl", tmp_path / "locked.jsonl")
    os.chmod(path, 0)
    assert_reported(problems_of(read_pairs, path), path, "unreadable (Permission denied)")


@pytest.mark.parametrize("name", ["ok_duplicate_rows.jsonl", "null_positive.parquet"])
def test_unreadable_file_simulated(monkeypatch, name):
    """The same as above where tests run as root: opening fails as chmod 000 makes it fail."""
    path = BAD / name

    def refuse(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(inputs.files, "open", refuse, raising=False)
    assert_reported(problems_of(read_pairs, path), path, "unreadable (Permission denied)")


def test_duplicate_rows_are_kept():
    pairs = read_pairs(BAD / "ok_duplicate_rows.jsonl")
    assert pairs.rows() == [("q one", "p one", ["n one"], "search"), ("q two", "p two", [], "default"),
                            ("q one", "p one", ["n one"], "search")]


def test_negative_mixing_strings_lists_and_nulls():
    pairs = read_pairs(BAD / "ok_mixed_negative.jsonl")
    assert pairs["negatives"].to_list() == [["n one"], ["n two", "n three"], [], []]


@pytest.mark.parametrize("excel", [False, True], ids=["lf", "bom-crlf"])
def test_csv_with_embedded_newlines_and_quotes(tmp_path, excel):
    data = (BAD / "ok_embedded_newlines.csv").read_bytes()
    if excel:  # what Excel writes: a byte order mark and CRLF line ends, kept inside quoted fields
        data = b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n")
    path = tmp_path / "pairs.csv"
    path.write_bytes(data)
    newline = "\r\n" if excel else "\n"
    pairs = read_pairs(path)
    assert pairs.rows() == [
        (f"q one{newline}spans two lines", "p one, with a comma", [], "default"),
        ('q two "quoted"', f"p two{newline}also{newline}spans", ["n two"], "search"),
        ("q three", 'p three, "said" with a comma', [], "default"),
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_one_megabyte_text_is_read_whole(tmp_path, suffix):
    long_text = "river bank " * 100_000  # over Python csv's default 128 KiB field limit
    frame = pl.DataFrame({"query": ["q one", "q two"], "positive": ["p one", long_text]})
    path = tmp_path / f"pairs{suffix}"
    {".jsonl": frame.write_ndjson, ".csv": frame.write_csv, ".parquet": frame.write_parquet}[suffix](path)
    assert read_pairs(path)["positive"].to_list() == ["p one", long_text]


def test_command_line_names_every_bad_file_and_writes_nothing(tmp_path):
    pairs = [BAD / "truncated.jsonl", BAD / "invalid_utf8.csv", BAD / "dataset_dict"]
    corpus = BAD / "corpus_missing_text.parquet"
    result = run_module("pipeline.embed", *[a for p in pairs for a in ("--input", p)], "--corpus", corpus,
                        "--work", tmp_path / "w", check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), lines
    for path in [*pairs, corpus]:
        assert any(line.startswith(f"error: {path}: ") for line in lines), (path, lines)
    assert not (tmp_path / "w").exists()


def test_command_line_leaves_an_existing_work_directory_empty(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    path = BAD / "negative_list_null.parquet"
    result = run_module("pipeline.embed", "--input", path, "--work", work, check=False)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {path}: row 2: column 'negative' holds a null"]
    assert list(work.iterdir()) == []
