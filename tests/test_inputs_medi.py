"""MEDI-shaped pairs recognised without options: pos/neg, task_name/task_type, instructions beside the texts or as
[instruction, text] pairs (dropped with one line, or prepended), from a Hub data set at a revision."""

from __future__ import annotations

import json

import polars as pl
import pytest
from medi_hub import INSTRUCTIONS, JSON_REPO, REPO, REVISION, medi_rows, serve, use_cache

from gist_mining import planning, workdir
from gist_mining.errors import InputError
from gist_mining.inputs import HubSelection


@pytest.fixture
def medi(tmp_path, monkeypatch) -> pl.DataFrame:
    rows = medi_rows()
    serve(tmp_path / "hf", rows)
    use_cache(tmp_path / "hf", monkeypatch)
    return rows


def planned(tmp_path, given: str, revision: str | None = REVISION, **kwargs) -> tuple[list[tuple], list[dict]]:
    folder = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}"
    plan, records = planning.read_inputs([given], [], folder, hub=HubSelection(revision=revision), **kwargs)
    texts = dict(pl.read_parquet(plan.path(workdir.TEXTS)).select("text_id", "text").iter_rows())
    anchors = pl.read_parquet(plan.path(workdir.ANCHORS))
    return [(texts[q], texts[p], [texts[n] for n in ns], task) for q, p, ns, task in
            anchors.select("query_id", "positive_id", "negative_ids", "task").iter_rows()], records


def expected(rows: pl.DataFrame, prepend: bool = False) -> list[tuple]:
    def text(row, column):  # an instruction ending in a space is joined as it is, another with a space
        instruction = INSTRUCTIONS[column]
        if not prepend:
            return row[column]
        return instruction + row[column] if instruction.endswith(" ") else f"{instruction} {row[column]}"

    return [(text(r, "query"), text(r, "pos"), [text(r, "neg")], r["task_name"]) for r in rows.iter_rows(named=True)]


def test_medi_columns_at_a_revision_instructions_dropped_with_one_line(tmp_path, medi, capsys):
    pairs, records = planned(tmp_path, REPO)
    assert pairs == expected(medi)  # the revision's rows (main has one fewer), tasks from task_name
    lines = capsys.readouterr().err.splitlines()
    said = [line for line in lines if "instructions dropped" in line]
    assert len(said) == 1 and "'pos' as positive" in said[0] and "'task_name' as task" in said[0]
    assert "'query_instruct' + 'pos_instruct' + 'neg_instruct' as instructions" in said[0]
    assert all("instructions" not in r for r in records)  # the default: fingerprints as before
    main, _ = planned(tmp_path, REPO, revision=None)
    assert main == expected(medi)[:-1]


def test_instructions_prepended_to_their_texts(tmp_path, medi, capsys):
    pairs, records = planned(tmp_path, REPO, instructions="prepend")
    assert pairs == expected(medi, prepend=True)
    assert "each instruction prepended to its text" in capsys.readouterr().err
    assert [r["instructions"] for r in records] == ["prepend"]  # a changed setting changes the embed plan


@pytest.mark.parametrize("mode", ["drop", "prepend"])
def test_instruction_text_pairs_as_in_the_medi_json(tmp_path, medi, mode):
    pairs, _ = planned(tmp_path, JSON_REPO, instructions=mode)
    assert pairs == expected(medi, prepend=mode == "prepend")  # tasks from task_type


def test_a_pair_that_is_not_instruction_and_text_is_named_by_row(tmp_path):
    path = tmp_path / "medi.jsonl"
    rows = [{"query": ["Represent: ", "q one"], "pos": ["Represent: ", "p one"], "task_name": "t"},
            {"query": ["only one"], "pos": ["Represent: ", "p two"], "task_name": "t"},
            {"query": ["Represent: ", "q three"], "pos": ["Represent: ", 3], "task_name": "t"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as caught:
        planning.read_inputs([str(path)], [], tmp_path / "plan")
    assert caught.value.problems == [
        f"{path}: row 2: column 'query' is a list of 1, expected [instruction, text] as in MEDI",
        f"{path}: row 3: column 'pos' is [str, int], expected [instruction, text] as in MEDI",
    ]


def test_an_instruction_that_is_not_a_string_is_named_by_row(tmp_path):
    path = tmp_path / "medi.jsonl"
    rows = [{"query": "q one", "pos": "p one", "query_instruct": "Represent: "},
            {"query": "q two", "pos": "p two", "query_instruct": 7}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as caught:
        planning.read_inputs([str(path)], [], tmp_path / "plan")
    assert caught.value.problems == [f"{path}: row 2: column 'query_instruct' is int, expected a string"]


def test_instruction_text_pairs_in_parquet_list_columns(tmp_path, medi):
    listed = medi.select(*(pl.concat_list(f"{c}_instruct", c).alias(c) for c in ("query", "pos", "neg")), "task_name")
    assert listed.schema["query"] == pl.List(pl.String)
    listed.write_parquet(tmp_path / "medi.parquet")
    pairs, _ = planned(tmp_path, str(tmp_path / "medi.parquet"), instructions="prepend")
    assert pairs == expected(medi, prepend=True)
