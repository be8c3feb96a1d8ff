"""Pairs and corpus files read, checked and handed on in batches (``pair_batches``, ``corpus_batches``); bad rows skipped
with a record where asked."""

from __future__ import annotations

from collections.abc import Generator
from functools import partial
from pathlib import Path

import polars as pl

from gist_mining.inputs import medi
from gist_mining.bad_rows import SkippedRows
from gist_mining.inputs.checks import as_strings, check_distinct, check_negatives, check_texts, as_negative_lists
from gist_mining.inputs.columns import resolve_columns
from gist_mining.inputs.files import table_batches
from gist_mining.inputs.problems import Problems, file_error


DEFAULT_TASK = "default"


def _checked_batches(path: Path, kind: str, given: dict[str, str], check,
                     skipped: SkippedRows | None = None) -> Generator[pl.DataFrame, None, dict]:
    """The frames of ``path`` through ``check(problems, frame, first_row, slots)``, which adds row problems and
    returns the validated frame; a frame is yielded only while the file has no problem, and the file's problems
    raise at its end (every row is checked: the count of problems is complete). Returns the slots of its
    columns (resolve_columns). With ``skipped`` (--skip-bad-rows), rows that fail ``check`` are recorded there
    and left out instead (a frame of pairs then says each row's ``source_row``); a file that does not parse
    still raises."""
    path = Path(path)
    problems, slots, rows = Problems(path), None, 0
    for frame in table_batches(path, problems):
        if problems.unparsed:
            continue
        if slots is None:
            slots = resolve_columns(path, frame.columns, kind, given)
            if kind == "pairs":
                slots = medi.instruction_slots(frame, slots)
        if frame.height:
            for name in (c for cs in slots.values() for c in cs):  # a key absent from a batch of JSON records
                if name not in frame.columns:
                    frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
            bad = Problems(path, keep_rows=True) if skipped is not None else problems
            checked = check(bad, frame, rows + 1, slots)
            if skipped is not None:
                kept = _skip_rows(skipped, path, bad.rows, frame, rows + 1)
                if bad.rows:  # checked again without its bad rows: now valid
                    checked = check(problems, kept.drop("source_row"), rows + 1, slots)
                if isinstance(checked, pl.DataFrame):  # pairs: anchors keep their rows' numbers
                    checked = checked.with_columns(kept.get_column("source_row"))
            if not problems.count:
                yield checked
        rows += frame.height
    if not problems.unparsed and rows == 0:
        raise file_error(path, "no rows")
    problems.raise_if_any()
    return slots


def _skip_rows(skipped: SkippedRows, path: Path, problems: list[tuple[int, str]], frame: pl.DataFrame,
               first_row: int) -> pl.DataFrame:
    """``frame`` less the rows with ``problems`` (recorded in ``skipped``), with each row's number as source_row."""
    numbered = frame.with_columns(pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias("source_row"))
    if not problems:
        return numbered
    skipped.add(path, problems)
    return numbered.filter(~pl.col("source_row").is_in(sorted({row for row, _ in problems})))


def _check_pairs(problems: Problems, frame: pl.DataFrame, first_row: int, slots: dict[str, list[str]],
                 instructions: str = medi.MODES[0]) -> pl.DataFrame:
    (query,), (positive,) = slots["query"], slots["positive"]
    frame = medi.with_instructions(problems, frame, first_row, slots, instructions)
    for column in (query, positive):
        check_texts(problems, column, frame.get_column(column), first_row, required=True)
    check_distinct(problems, query, positive, frame, first_row)
    negatives = slots.get("negative", [])
    for column in negatives:
        check_negatives(problems, column, frame.get_column(column), first_row)
    tasks = (frame.get_column(slots["task"][0]) if "task" in slots
             else pl.repeat(DEFAULT_TASK, frame.height, eager=True))
    check_texts(problems, slots.get("task", ["task"])[0], tasks, first_row, required=False)
    if problems.count:
        return frame
    if negatives:
        lists = pl.DataFrame([as_negative_lists(frame.get_column(c)).alias(str(i)) for i, c in enumerate(negatives)])
        negative_lists = lists.select(pl.concat_list(pl.all()).alias("negatives")).to_series()
    else:
        negative_lists = pl.Series(dtype=pl.List(pl.String)).extend_constant([], frame.height)
    return pl.DataFrame({"query": as_strings(frame.get_column(query)), "positive": as_strings(frame.get_column(positive)),
                         "negatives": negative_lists.alias("negatives"),
                         "task": as_strings(tasks).fill_null(DEFAULT_TASK).alias("task")})


def pair_batches(path: str | Path, columns: dict[str, str] | None = None,
                 instructions: str = medi.MODES[0], skipped: SkippedRows | None = None
                 ) -> Generator[pl.DataFrame, None, dict]:
    """Validated pairs in frames of at most BATCH_ROWS rows, with columns query, positive, negatives (list of
    strings) and task, one row per input row in order (duplicates kept, see the module docstring). The file's
    problems raise once it is read to its end: a consumer must not keep what it took from a file that raises.
    ``columns``: --columns' {slot: column}; returns the slots of the file's columns (see resolve_columns).
    ``instructions``: what becomes of MEDI-style instructions, dropped or prepended (gist_mining.inputs.medi).
    ``skipped``: leave out the rows that fail the checks, recorded there (_checked_batches)."""
    return _checked_batches(Path(path), "pairs", columns or {}, partial(_check_pairs, instructions=instructions),
                            skipped)


def _check_corpus(problems: Problems, frame: pl.DataFrame, first_row: int, slots: dict[str, list[str]]) -> pl.Series:
    (column,) = slots["text"]
    check_texts(problems, column, frame.get_column(column), first_row, required=True)
    return as_strings(frame.get_column(column)).alias("text") if not problems.count else frame.get_column(column)


def corpus_batches(path: str | Path, columns: dict[str, str] | None = None,
                   skipped: SkippedRows | None = None) -> Generator[pl.Series, None, dict]:
    """A corpus file's column ``text`` (or --columns' text=COLUMN), validated, in series of at most BATCH_ROWS
    texts (as pair_batches)."""
    return _checked_batches(Path(path), "corpus", columns or {}, _check_corpus, skipped)
