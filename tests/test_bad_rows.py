"""Bad input rows: a positive equal to its query is refused like a blank text; --skip-bad-rows leaves every kind of
bad row out instead, listed with its reason in skipped_rows.parquet, and embeds the good rows as a file of only them."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
from conftest import make_pairs, run_stage

from gist_mining import workdir
from gist_mining.workdir import load_embeddings
from pipeline import embed

# (row as written, the reason it is skipped: a fragment of its one line; None: a good row)
ROWS = [
    ({"query": "q one", "positive": "p one", "negative": ["n one"]}, None),
    ({"query": "same text", "positive": "same text"}, "column 'positive' equals column 'query'"),
    ({"query": "   ", "positive": "p three"}, "column 'query' is empty"),
    ({"query": "q four", "positive": None}, "column 'positive' is null"),
    ({"query": "q five", "positive": "p five", "negative": ["n five", "\u200b"]}, "column 'negative' holds an empty string"),
    # a negative equal to its own positive is no bad row: it is dropped from the negatives, as data.md says
    ({"query": "q six", "positive": "p six", "negative": ["p six", "n six"]}, None),
    ({"query": "", "positive": ""}, "column 'query' is empty; column 'positive' is empty"),
    ({"query": "q eight", "positive": "p eight"}, None),
]


def write(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def embed_args(source, work, guide, *extra):
    return ["--input", source, "--work", work, "--guide", guide, "--texts-per-shard", 4, "--no-cache", *extra]


def test_a_positive_equal_to_its_query_is_refused_in_one_line(tmp_path, tiny_guide, capsys):
    rows = make_pairs(5, seed=3).drop("negative").to_dicts()
    rows[2]["positive"] = rows[2]["query"]
    write(tmp_path / "pairs.jsonl", rows)
    assert run_stage(embed, *embed_args(tmp_path / "pairs.jsonl", tmp_path / "w", tiny_guide)) == 2
    line = f"error: {tmp_path / 'pairs.jsonl'}: row 3: column 'positive' equals column 'query' (a positive must differ "
    assert capsys.readouterr().err.strip().splitlines() == [line + "from its query)"]
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").iterdir())


def test_bad_rows_stop_by_default_and_are_skipped_with_a_record(tmp_path, tiny_guide, capsys):
    source = tmp_path / "pairs.jsonl"
    write(source, [row for row, _ in ROWS])
    assert run_stage(embed, *embed_args(source, tmp_path / "refused", tiny_guide)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    expected_rows = [i + 1 for i, (_, why) in enumerate(ROWS) if why]
    # one line per problem (row 7 has two), each naming the file and the row, in the file's order
    assert all(line.startswith(f"error: {source}: row ") for line in lines) and len(lines) == 6
    assert sorted({int(line.split(": row ")[1].split(":")[0]) for line in lines}) == expected_rows
    assert not (tmp_path / "refused" / workdir.TEXTS).exists()

    work = tmp_path / "skipped"
    assert run_stage(embed, *embed_args(source, work, tiny_guide, "--skip-bad-rows")) == 0
    err = capsys.readouterr().err
    assert f"embed: {len(expected_rows)} bad input rows skipped ({source}: {len(expected_rows)})" in err
    skipped = pl.read_parquet(work / workdir.SKIPPED)
    assert skipped["source"].to_list() == [str(source)] * len(expected_rows)
    assert skipped["row"].to_list() == expected_rows
    for reason, (_, why) in zip(skipped["reason"].to_list(), [r for r in ROWS if r[1]]):
        assert why in reason
    manifest = json.loads((work / workdir.EMBED_MANIFEST).read_text())
    assert manifest["counts"]["skipped_rows"] == len(expected_rows)
    assert manifest["inputs"][0]["skipped_rows"] == len(expected_rows)

    # the good rows alone, embedded without the option: the same texts and vectors, the same anchors but for
    # their row numbers, which name the rows of the file they came from
    good = tmp_path / "good.jsonl"
    write(good, [row for row, why in ROWS if why is None])
    assert run_stage(embed, *embed_args(good, tmp_path / "clean", tiny_guide)) == 0
    assert pl.read_parquet(work / workdir.TEXTS).equals(pl.read_parquet(tmp_path / "clean" / workdir.TEXTS))
    anchors, clean = (pl.read_parquet(w / workdir.ANCHORS) for w in (work, tmp_path / "clean"))
    assert anchors["source_row"].to_list() == [i + 1 for i, (_, why) in enumerate(ROWS) if why is None]
    assert anchors.drop("source", "source_row").equals(clean.drop("source", "source_row"))
    (ids, vectors), (clean_ids, clean_vectors) = (load_embeddings(w) for w in (work, tmp_path / "clean"))
    assert np.array_equal(ids, clean_ids) and np.array_equal(vectors, clean_vectors)

    # a rerun resumes the finished directory; without the option the same input is refused again
    assert run_stage(embed, *embed_args(source, work, tiny_guide, "--skip-bad-rows")) == 0
    assert run_stage(embed, *embed_args(source, work, tiny_guide)) == 2
    assert pl.read_parquet(work / workdir.SKIPPED).equals(skipped)


def test_clean_input_with_the_option_writes_an_empty_record(tmp_path, tiny_guide):
    source = tmp_path / "pairs.jsonl"
    write(source, make_pairs(6, seed=5).drop("negative").to_dicts())
    assert run_stage(embed, *embed_args(source, tmp_path / "w", tiny_guide, "--skip-bad-rows")) == 0
    assert pl.read_parquet(tmp_path / "w" / workdir.SKIPPED).height == 0
    assert json.loads((tmp_path / "w" / workdir.EMBED_MANIFEST).read_text())["counts"]["skipped_rows"] == 0


def test_skipped_rows_across_batches_keep_the_good_rows_numbers(tmp_path, monkeypatch):
    from gist_mining import inputs, planning

    monkeypatch.setattr(inputs.files, "BATCH_ROWS", 3)  # the bad rows fall in three batches of the file
    source = tmp_path / "pairs.jsonl"
    write(source, [row for row, _ in ROWS])
    planned, records = planning.read_inputs([source], [], tmp_path / "plan", skip_bad_rows=True)
    anchors = pl.read_parquet(planned.path(workdir.ANCHORS))
    assert anchors["source_row"].to_list() == [i + 1 for i, (_, why) in enumerate(ROWS) if why is None]
    assert pl.read_parquet(planned.path(workdir.SKIPPED))["row"].to_list() == [i + 1 for i, (_, why) in enumerate(ROWS) if why]
    assert planned.skipped == {str(source): 5} and records[0]["skipped_rows"] == 5
