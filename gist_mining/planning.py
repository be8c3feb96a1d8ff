"""The embed stage's plan of its inputs: every distinct text once with its content id, the anchors as ids.

Writes texts.parquet (``text_id``, ``text``, ``is_query``, ``is_document``, ``n_chars``; sorted by length, then
id, so that an embedding shard holds texts of similar length) and anchors.parquet (``anchor_id``, ``source``,
``source_row``, ``query_id``, ``positive_id``, ``negative_ids``, ``task``; one row per input row, in order), in
row groups, with memory bounded by a batch of rows and a range of texts, never by the inputs:

1. read: each input is read and validated in row batches (``gist_mining.inputs``); each batch spills its
   distinct texts (sorted by length and id; its given negatives apart) and its anchors as ids to a scratch
   folder, and the bytes of text per length are counted. A text's id is a hash of its content
   (``workdir.text_id``), so no table of ids is needed to turn texts into ids.
2. given negatives: cleaned on id columns only (``clean_given_negatives``); a dropped one is no document.
3. texts: equal texts have equal lengths, so the length axis is cut into ranges holding at most RANGE_BYTES of
   spilled text (``text_ranges``) and each range is deduplicated and sorted on its own; written one after the
   other, the ranges give the table in its global order.
4. anchors: written in order, with the cleaned lists of negatives.

Measured by benchmarks/plan_scale.py (benchmarks/results/plan_scale.md).
The scratch folder holds about the inputs' text once more while planning runs.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining import workdir
from gist_mining.bad_rows import SkippedRows
from gist_mining.errors import InputError
from gist_mining.inputs import (
    BATCH_ROWS,
    DEFAULT_TASK,
    HubSelection,
    corpus_batches,
    describe_columns,
    input_files,
    medi,
    pair_batches,
    retrieval_pairs,
)
from gist_mining.storage import AtomicParquetWriter, path_sha256

TEXTS_SCHEMA = pa.schema([("text_id", pa.int64()), ("text", pa.large_string()), ("is_query", pa.bool_()),
                          ("is_document", pa.bool_()), ("n_chars", pa.uint32())])
ANCHORS_SCHEMA = pa.schema([("anchor_id", pa.int64()), ("source", pa.large_string()), ("source_row", pa.int64()),
                            ("query_id", pa.int64()), ("positive_id", pa.int64()),
                            ("negative_ids", pa.large_list(pa.int64())), ("task", pa.large_string())])
# Spilled text deduplicated at a time; memory holds several times this (3M pairs: 1.3 GB of peak RSS at 128 MiB,
# 1.8 GB at 256 MiB, and 10% more time at the smaller size).
RANGE_BYTES = 128 << 20
SPILL_ROW_GROUP = 8192  # small: a range's scan skips the row groups of a spill file outside its lengths
ROW_GROUP = 65_536  # rows per row group of texts.parquet and anchors.parquet: a shard reads just its groups
KEPT_SCHEMA = {"anchor_id": pl.Int64, "negative_ids": pl.List(pl.Int64)}  # clean_given_negatives' lists
INT64 = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)


@dataclass(frozen=True)
class Planned:
    """What planning wrote (texts.parquet and anchors.parquet in ``folder``) and its counts."""

    folder: Path
    counts: dict  # anchors, texts, queries, documents
    dropped: int  # given negatives dropped by clean_given_negatives
    skipped: dict[str, int] = field(default_factory=dict)  # --skip-bad-rows: rows left out per source file

    def path(self, name: str) -> Path:
        return self.folder / name


def read_inputs(pairs: list, corpora: list, folder: Path, columns: dict[str, str] | None = None,
                hub: HubSelection | None = None, retrieval: tuple | None = None,
                instructions: str = medi.MODES[0], skip_bad_rows: bool = False) -> tuple[Planned, list[dict]]:
    """Plan the pairs and corpus inputs (files, folders, globs, Hub datasets: ``inputs.input_files``) into ``folder``, their
    columns taken as ``columns`` says (--columns, else recognised: ``inputs.resolve_columns``); every file is
    read to its end before any problem raises, so that one run names the problems of all of them. Returns the
    plan and one record per file (kind, path, sha256, and the columns when given) for the stage's fingerprint.
    ``retrieval``: (queries, corpus, qrels) as BEIR lays them out (``inputs.retrieval_pairs``): the qrels' pairs,
    and the corpus as extra texts. ``instructions``: MEDI-style instructions dropped or prepended (gist_mining.inputs.medi).
    ``skip_bad_rows``: rows that fail a check are left out and listed in the folder's skipped_rows.parquet
    (``gist_mining.bad_rows``) instead of raising."""
    problems: list[str] = []
    skipped = SkippedRows(folder / workdir.SKIPPED) if skip_bad_rows else None

    def files(given: list) -> list[Path]:
        found = []
        for name in given:
            try:
                found += input_files(name, hub or HubSelection())
            except InputError as err:
                problems.extend(err.problems)
        return found

    said = []  # which columns were taken as what, logged once every input is known to be good

    def checked(path: Path, batches: Generator) -> Iterator:
        try:
            slots = yield from batches
            said.append(f"embed: {path}: {describe_columns(slots)}{medi.describe(slots, instructions)}")
        except InputError as err:
            problems.extend(err.problems)

    pairs, corpora = files(pairs), files(corpora)
    sources = [(str(p), checked(p, pair_batches(p, columns, instructions, skipped))) for p in pairs]
    texts = [checked(p, corpus_batches(p, columns, skipped)) for p in corpora]
    if retrieval:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            pairs_file, corpus_file = retrieval_pairs(*retrieval, folder)
            sources.append((str(retrieval[2]), _parquet_frames(pairs_file)))
            texts.append(_parquet_frames(corpus_file, "text"))
        except InputError as err:
            problems.extend(err.problems)

    try:
        planned = plan_texts(sources, texts, folder, give_up=lambda: bool(problems))
    finally:
        if skipped is not None:
            skipped.close(keep=not problems)
    if problems:
        raise InputError(problems)
    if skipped is not None:
        planned = replace(planned, skipped=dict(skipped.counts))
    for line in said:
        print(line, file=sys.stderr)
    kinds = [("pairs", pairs), ("corpus", corpora)] + ([("queries", retrieval[:1]), ("corpus", retrieval[1:2]),
                                                        ("qrels", retrieval[2:])] if retrieval else [])
    # What the stage's fingerprint covers: each file's kind and content, and the columns it was read by.
    # Rows left out change what is planned from the same bytes: counted, so that the fingerprint tells.
    records = [{"kind": kind, "path": str(p), "sha256": path_sha256(Path(p)),
                **({"columns": columns} if columns and kind in ("pairs", "corpus") else {}),
                **({"instructions": instructions} if instructions != medi.MODES[0] and kind == "pairs" else {}),
                **({"skipped_rows": planned.skipped[str(p)]} if planned.skipped.get(str(p)) else {})}
               for kind, paths in kinds for p in paths]
    return planned, records


def _parquet_frames(path: Path, column: str | None = None) -> Iterator:
    """A table planning wrote itself, in batches: frames (as pair_batches gives them), or one column's series."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
        frame = pl.from_arrow(batch)
        if column:
            yield frame.get_column(column)
        else:
            yield frame.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("negatives"),
                                     pl.lit(DEFAULT_TASK).alias("task"))


def plan_texts(pairs: list[tuple[str, Iterable[pl.DataFrame]]], corpora: list[Iterable[pl.Series]], folder: Path,
               give_up=lambda: False) -> Planned:
    """Deduplicate every text across inputs, give it its content id, and write the two tables into ``folder``.

    ``pairs``: per pairs input, its name (the anchors' ``source``) and its batches as ``inputs.pair_batches``
    gives them; ``corpora``: per corpus input, its batches of texts. ``give_up()`` true after an input's batches
    end: an input had problems, nothing more is written (the caller raises them).
    """
    folder.mkdir(parents=True, exist_ok=True)
    spill = folder / "spill"
    spill.mkdir()
    try:
        spilled = _spill(pairs, corpora, spill, give_up)
        if give_up():
            return Planned(folder, {}, 0)
        kept, kept_negatives, dropped = clean_given_negatives(spilled.anchors, spill)
        counts = _write_texts(spilled, folder / workdir.TEXTS, pl.Series(kept_negatives))
        counts["anchors"] = _write_anchors(spilled, kept, folder / workdir.ANCHORS)
        return Planned(folder, counts, dropped)
    finally:
        shutil.rmtree(spill)


# -- 1. read: each batch's texts and anchors spilled to disk --------------------------------------------


@dataclass
class _Spilled:
    texts: list[Path]  # queries, positives and corpus texts
    negatives: list[Path]  # given negatives (documents if clean_given_negatives keeps them somewhere)
    anchors: list[Path]
    lengths: list[pl.DataFrame]  # per spill file: n_chars and the bytes of text of that length


def _spill(pairs, corpora, spill: Path, give_up) -> _Spilled:
    spilled, anchor_id = _Spilled([], [], [], []), 0
    for source, batches in pairs:
        source_row = 1
        for batch in batches:
            if give_up():  # an input had problems: the rest are only read, for theirs
                continue
            negatives = batch.get_column("negatives").explode().drop_nulls()
            ids = _spill_texts(spilled, spill, batch.get_column("query"), batch.get_column("positive"), negatives)
            _spill_anchors(spilled, spill, batch, ids, source, anchor_id, source_row)
            anchor_id, source_row = anchor_id + batch.height, source_row + batch.height
    for batches in corpora:
        for texts in batches:
            if not give_up():
                _spill_texts(spilled, spill, pl.Series(dtype=pl.String), texts, pl.Series(dtype=pl.String))
    return spilled


def _spill_texts(spilled: _Spilled, spill: Path, queries: pl.Series, documents: pl.Series,
                 negatives: pl.Series) -> pl.DataFrame:
    """A batch's distinct texts, with their ids, lengths and roles, as spill files: the given negatives apart,
    as a negative dropped by clean_given_negatives is no document; returns text -> id."""
    def role(texts: pl.Series, is_query: bool) -> pl.DataFrame:
        return pl.DataFrame({"text": texts.cast(pl.String)}).with_columns(is_query=pl.lit(is_query),
                                                                           is_document=pl.lit(not is_query))

    ids = []
    for kind, texts in (("texts", pl.concat([role(queries, True), role(documents, False)])),
                        ("negatives", role(negatives, False))):
        if texts.is_empty():
            continue
        texts = texts.group_by("text").agg(pl.col("is_query").any(), pl.col("is_document").any())
        texts = (texts.with_columns(pl.Series("text_id", workdir.text_ids(texts.get_column("text").to_list())),
                                    pl.col("text").str.len_chars().alias("n_chars"))
                 .select(TEXTS_SCHEMA.names).sort("n_chars", "text_id"))
        path = spill / f"{kind}-{len(spilled.texts) + len(spilled.negatives):06d}.parquet"
        texts.write_parquet(path, row_group_size=SPILL_ROW_GROUP, statistics=True, compression="lz4")
        getattr(spilled, kind).append(path)
        spilled.lengths.append(texts.group_by("n_chars").agg(
            pl.col("text").str.len_bytes().cast(pl.Int64).sum().alias("bytes")))
        ids.append(texts.select("text", "text_id"))
    return pl.concat(ids).unique("text")


def _spill_anchors(spilled: _Spilled, spill: Path, batch: pl.DataFrame, ids: pl.DataFrame, source: str,
                   first_anchor: int, first_row: int) -> None:
    def to_id(expr: pl.Expr) -> pl.Expr:
        return expr.replace_strict(ids.get_column("text"), ids.get_column("text_id"), return_dtype=pl.Int64)

    anchors = batch.select(
        pl.int_range(first_anchor, first_anchor + batch.height, dtype=pl.Int64).alias("anchor_id"),
        pl.lit(source, dtype=pl.String).alias("source"),
        # A batch may say its rows' numbers in its source (a retrieval layout's pairs: the qrels' rows).
        pl.col("source_row") if "source_row" in batch.columns else
        pl.int_range(first_row, first_row + batch.height, dtype=pl.Int64).alias("source_row"),
        to_id(pl.col("query")).alias("query_id"), to_id(pl.col("positive")).alias("positive_id"),
        pl.col("negatives").list.eval(to_id(pl.element())).alias("negative_ids"), "task",
    )
    path = spill / f"anchors-{len(spilled.anchors):06d}.parquet"
    anchors.write_parquet(path, compression="lz4")
    spilled.anchors.append(path)


# -- 2. texts: ranges of lengths, each deduplicated and sorted on its own --------------------------------


def text_ranges(lengths: pl.DataFrame, budget: int) -> list[tuple[int, int, int, int]]:
    """(first length, last length, first id, last id) ranges, in the table's order, each holding at most
    ``budget`` bytes of spilled text where it can: consecutive lengths are grouped, and a length holding more
    than the budget alone is cut into equal ranges of ids (ids are hashes: evenly spread)."""
    per_length = lengths.group_by("n_chars").agg(pl.col("bytes").sum()).sort("n_chars")
    ranges, start, previous, held = [], None, None, 0
    for n_chars, size in per_length.iter_rows():
        if start is not None and held + size > budget:
            ranges.append((start, previous, *INT64))
            start, held = None, 0
        if size > budget:
            cuts = np.linspace(INT64[0], INT64[1], -(-size // budget) + 1, dtype=np.float64)
            bounds = [INT64[0], *(int(c) for c in cuts[1:-1]), INT64[1]]
            ranges += [(n_chars, n_chars, lo if i == 0 else lo + 1, hi) for i, (lo, hi) in enumerate(pairwise(bounds))]
            continue
        start = n_chars if start is None else start
        held, previous = held + size, n_chars
    if start is not None:
        ranges.append((start, previous, *INT64))
    return ranges


def _write_texts(spilled: _Spilled, path: Path, kept_negatives: pl.Series) -> dict:
    lengths = pl.concat(spilled.lengths) if spilled.lengths else pl.DataFrame(schema={"n_chars": pl.UInt32, "bytes": pl.Int64})
    counts = {"texts": 0, "queries": 0, "documents": 0}
    ids = []
    with AtomicParquetWriter(path, TEXTS_SCHEMA) as out:
        for first, last, low, high in text_ranges(lengths, RANGE_BYTES):
            in_range = (pl.col("n_chars").is_between(first, last), pl.col("text_id").is_between(low, high))
            scans = [pl.scan_parquet(files).filter(*in_range) for files in (spilled.texts, spilled.negatives) if files]
            if spilled.negatives:
                scans[-1] = scans[-1].filter(pl.col("text_id").is_in(kept_negatives.implode()))
            part = (
                pl.concat(scans)
                .group_by("text_id", "text").agg(pl.col("is_query").any(), pl.col("is_document").any(),
                                                 pl.col("n_chars").first())
                .select(TEXTS_SCHEMA.names).sort("n_chars", "text_id").collect()
            )
            out.writer.write_table(part.to_arrow().cast(TEXTS_SCHEMA), row_group_size=ROW_GROUP)
            ids.append(part.get_column("text_id").to_numpy())
            counts["texts"] += part.height
            counts["queries"] += int(part.get_column("is_query").sum())
            counts["documents"] += int(part.get_column("is_document").sum())
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        if len(np.unique(ids)) != len(ids):
            raise InputError(["two distinct texts share a 64-bit text_id; please report this input"])
    return counts


# -- 3. anchors: given negatives cleaned on ids, then written in order ------------------------------------


def clean_given_negatives(runs: list[Path], spill: Path) -> tuple[list[Path], np.ndarray, int]:
    """Per spilled run of anchors, the given negatives kept (``anchor_id``, ``negative_ids``; by anchor_id) as a
    spill file beside it: each anchor's given negatives minus its own query and every positive of that query
    (in any run), each kept once, in order. Returns those files, the distinct kept negative ids, and how many
    given negatives were dropped.

    A text given as a negative of a query that another row gives as its positive is a contradiction in the
    input; kept, it would train the model away from a labelled positive. Reads id columns only, one run at a
    time beside every (query, positive) pair: memory holds a run's negatives, not the input's.
    """
    positives = (pl.scan_parquet(runs).select("query_id", pl.col("positive_id").alias("negative_ids")).unique().collect()
                 if runs else None)
    kept_files, kept_ids, dropped = [], [], 0
    for i, run in enumerate(runs):
        given = (pl.read_parquet(run, columns=["anchor_id", "query_id", "negative_ids"]).explode("negative_ids")
                 .drop_nulls("negative_ids"))
        kept = (
            given.filter(pl.col("negative_ids") != pl.col("query_id"))
            .join(positives, on=["query_id", "negative_ids"], how="anti", maintain_order="left")
            .unique(subset=["anchor_id", "negative_ids"], keep="first", maintain_order=True)
            .group_by("anchor_id", maintain_order=True).agg("negative_ids")
        )
        kept_files.append(spill / f"kept-{i:06d}.parquet")
        kept.write_parquet(kept_files[-1], compression="lz4")
        kept_ids.append(np.unique(kept.get_column("negative_ids").explode().drop_nulls().to_numpy()))
        dropped += given.height - int(kept.get_column("negative_ids").list.len().sum())
    return kept_files, np.unique(np.concatenate(kept_ids)) if kept_ids else np.zeros(0, np.int64), dropped


def _write_anchors(spilled: _Spilled, kept: list[Path], path: Path) -> int:
    total = 0
    with AtomicParquetWriter(path, ANCHORS_SCHEMA) as out:
        for run, kept_run in zip(spilled.anchors, kept, strict=True):
            anchors = pl.read_parquet(run)
            cleaned = anchors.drop("negative_ids").join(pl.read_parquet(kept_run).cast(KEPT_SCHEMA),
                                                        on="anchor_id", how="left", maintain_order="left")
            cleaned = cleaned.with_columns(pl.col("negative_ids").fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
            out.writer.write_table(cleaned.select(ANCHORS_SCHEMA.names).to_arrow().cast(ANCHORS_SCHEMA),
                                   row_group_size=ROW_GROUP)
            total += anchors.height
    return total
