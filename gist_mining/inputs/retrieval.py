"""A retrieval layout: queries, corpus and qrels as BEIR and MTEB lay them out, checked, as pairs and a corpus."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining.errors import InputError
from gist_mining.inputs.checks import BLANK, as_strings, check_texts
from gist_mining.inputs.files import table_batches
from gist_mining.inputs.problems import MAX_PROBLEMS, Problems, file_error


RETRIEVAL_COLUMNS = {"queries": (("_id", "text"), ()), "corpus": (("_id", "text"), ("title",)),
                     "qrels": (("query-id", "corpus-id"), ("score",))}


# The bundled splits' names for the same columns (data/sample/test: query_id, doc_id), taken where BEIR's are absent.
RETRIEVAL_ALIASES = {"queries": {"query_id": "_id"}, "corpus": {"doc_id": "_id"},
                     "qrels": {"query_id": "query-id", "doc_id": "corpus-id"}}


def _retrieval_table(path: Path, kind: str, out: Path) -> Path:
    """A BEIR file read in batches and checked (ids present, texts usable, scores numbers) into ``out`` as
    Parquet: ids as strings, the file's row numbers in ``row``."""
    required, optional = RETRIEVAL_COLUMNS[kind]
    problems, rows, writer = Problems(path), 0, None
    try:
        for frame in table_batches(path, problems):
            if problems.unparsed:
                continue
            frame = frame.rename({a: c for a, c in RETRIEVAL_ALIASES[kind].items()
                                  if a in frame.columns and c not in frame.columns})
            missing = [c for c in required if c not in frame.columns]
            if missing and (rows == 0 or path.suffix.lower() not in (".jsonl", ".json", ".ndjson")):
                raise InputError([f"{path}: missing column '{c}' (has: {', '.join(frame.columns) or 'none'}); "
                                  f"a {kind} file of the BEIR layout has {', '.join(required + optional)}" for c in missing])
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(c) for c in missing)
            table = _retrieval_rows(problems, frame, kind, rows + 1)
            rows += frame.height
            if table is not None and not problems.count:
                writer = writer or pq.ParquetWriter(out, table.schema)
                writer.write_table(table)
    finally:
        if writer:
            writer.close()
    if not problems.unparsed and rows == 0:
        raise file_error(path, "no rows")
    problems.raise_if_any()
    return out


def _retrieval_rows(problems: Problems, frame: pl.DataFrame, kind: str, first_row: int) -> pa.Table | None:
    required, ids = RETRIEVAL_COLUMNS[kind][0], {}
    for column in (c for c in required if c != "text"):
        values = frame.get_column(column)
        for i in values.is_null().arg_true().to_list():
            problems.add(f"column '{column}' is null", first_row + i)
        ids[column] = pl.Series(column, [None if v is None else str(v) for v in values.to_list()], dtype=pl.String)
    out = pl.DataFrame({"row": pl.int_range(first_row, first_row + frame.height, eager=True, dtype=pl.Int64), **ids})
    if kind == "qrels":
        scores = frame.get_column("score") if "score" in frame.columns else pl.repeat(1, frame.height, eager=True)
        numbers = scores.cast(pl.Float64, strict=False) if scores.dtype != pl.Object else pl.Series(
            [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in scores.to_list()])
        for i in (numbers.is_null() & scores.is_not_null()).arg_true().to_list():
            problems.add(f"column 'score' is {scores[i]!r}, expected a number", first_row + i)
        return out.with_columns(numbers.fill_null(1.0).alias("score")).to_arrow()
    check_texts(problems, "text", frame.get_column("text"), first_row, required=True)
    if problems.count:
        return None
    text = as_strings(frame.get_column("text"))
    if "title" in frame.columns:  # a blank title adds nothing
        title = pl.Series([t if isinstance(t, str) and not BLANK.fullmatch(t) else None
                           for t in frame.get_column("title").to_list()], dtype=pl.String)
        text = pl.select(pl.when(title.is_null()).then(text).otherwise(pl.concat_str(title, pl.lit(" "), text))).to_series()
    return out.with_columns(text.alias("text")).to_arrow()


def retrieval_tables(queries: Path, corpus: Path, qrels: Path, folder: Path) -> dict[str, pl.LazyFrame]:
    """The layout's three files read and checked into Parquet in ``folder``: {"queries": (row, _id, text),
    "corpus": (row, _id, text), "qrels": (row, query-id, corpus-id, score)}, ids as strings, in file order.
    Problems: one line each, naming the file and the row (an id given twice, a qrel naming an id its file lacks)."""
    queries, corpus, qrels = Path(queries), Path(corpus), Path(qrels)
    tables, problems = {}, []
    for kind, path in (("queries", queries), ("corpus", corpus), ("qrels", qrels)):
        try:
            tables[kind] = pl.scan_parquet(_retrieval_table(path, kind, folder / f"retrieval-{kind}.parquet"))
        except InputError as err:
            problems += err.problems
    if problems:
        raise InputError(problems)
    for kind, path in (("queries", queries), ("corpus", corpus)):
        repeated = (tables[kind].select("row", "_id").filter(~pl.col("_id").is_first_distinct())
                    .sort("row").head(MAX_PROBLEMS).collect())
        problems += [f"{path}: row {row}: _id {id_!r} is given to an earlier row too" for row, id_ in repeated.iter_rows()]
    for column, kind, path in (("query-id", "queries", queries), ("corpus-id", "corpus", corpus)):
        unknown = (tables["qrels"].select("row", column).join(tables[kind].select("_id"), left_on=column,
                                                               right_on="_id", how="anti")
                   .sort("row").head(MAX_PROBLEMS).collect())
        problems += [f"{qrels}: row {row}: {column} {id_!r} is not in {path}" for row, id_ in unknown.iter_rows()]
    if problems:
        raise InputError(problems)
    return tables


def retrieval_pairs(queries: Path, corpus: Path, qrels: Path, folder: Path) -> tuple[Path, Path]:
    """The layout as a pairs table (query, positive, source_row: the qrel's row; in qrels order) and a corpus
    table (text), both Parquet in ``folder`` (the files checked by ``retrieval_tables``)."""
    qrels = Path(qrels)
    tables = retrieval_tables(queries, corpus, qrels, folder)
    relevant = tables["qrels"].filter(pl.col("score") > 0)
    documents = tables["corpus"].join(relevant.select(pl.col("corpus-id").alias("_id")).unique(), on="_id", how="semi")
    pairs = (relevant.join(tables["queries"].select("_id", pl.col("text").alias("query")), left_on="query-id",
                           right_on="_id")
             .join(documents.select("_id", pl.col("text").alias("positive")), left_on="corpus-id", right_on="_id")
             .sort("row").select("query", "positive", pl.col("row").alias("source_row")))
    if pairs.select(pl.len()).collect().item() == 0:
        raise file_error(qrels, "no qrel scores above 0: no pairs")
    pairs.sink_parquet(folder / "retrieval-pairs.parquet")
    tables["corpus"].select("text").sink_parquet(folder / "retrieval-corpus-texts.parquet")
    return folder / "retrieval-pairs.parquet", folder / "retrieval-corpus-texts.parquet"
