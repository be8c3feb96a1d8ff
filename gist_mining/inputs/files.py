"""Readers: Parquet, JSONL, CSV and ``datasets`` folders, in row batches, with their row numbers (``table_batches``)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining.inputs.problems import Problems, describe_error, file_error


# Rows read, checked and handed on at a time: memory holds a batch, never the file.
BATCH_ROWS = 100_000


# What undecodable bytes turn into when decoded with errors="surrogateescape": U+DC80..U+DCFF for 0x80..0xFF.
_UNDECODABLE = re.compile("[\udc80-\udcff]")


# Python's csv refuses fields over 128 KiB by default; long texts are accepted (see above).
_CSV_FIELD_LIMIT = 2**31 - 1


def _jsonl_batches(path: Path, fh, problems: Problems) -> Iterator[pl.DataFrame]:
    """JSONL parsed per line, so that a broken line or a mixed-type value is named by its row. Once a line
    does not parse, later lines are only checked for parsing: the row numbers of the batches would be off."""
    if fh.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        raise file_error(path, "a JSON array; expected JSON Lines (one object per line)")
    fh.seek(0)
    records, row = [], 0
    for line, raw in enumerate(fh, start=1):
        if not raw.strip():
            continue
        row += 1
        # The last line of a file that does not end with a newline is where a cut-off copy breaks.
        truncated = "" if raw.endswith(b"\n") else "; the file ends mid-line, it may be truncated"
        try:
            record = json.loads(raw.decode("utf-8-sig"))  # -sig: a byte order mark some editors write
        except UnicodeDecodeError as err:
            where = f"byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line"
            problems.add(f"not valid UTF-8 ({where}){truncated}", row, line)
            problems.unparsed = True
            continue
        except json.JSONDecodeError as err:
            problems.add(f"not valid JSON at column {err.colno} ({err.msg}){truncated}", row, line)
            problems.unparsed = True
            continue
        if not isinstance(record, dict):
            problems.add(f"expected a JSON object, got {type(record).__name__}", row, line)
            problems.unparsed = True
            continue
        records.append(record)
        if len(records) == BATCH_ROWS:
            yield pl.DataFrame() if problems.unparsed else _records_frame(records)
            records = []
    if records:
        yield pl.DataFrame() if problems.unparsed else _records_frame(records)


def _records_frame(records: list[dict]) -> pl.DataFrame:
    columns = sorted({key for record in records for key in record})
    # Object columns keep each value as written, so the row checks see the real types.
    return pl.DataFrame({c: pl.Series(c, [r.get(c) for r in records], dtype=pl.Object) for c in columns})


def _csv_batches(path: Path, fh, problems: Problems, delimiter: str) -> Iterator[pl.DataFrame]:
    """RFC 4180 CSV: quoted fields may hold delimiters, doubled quotes and line breaks. Every value is read
    as a string, and an empty field as null (a missing optional value). Row n is the n-th record after the
    header; blank lines are skipped."""
    # surrogateescape: undecodable bytes kept as lone surrogates, so that each bad field is named by row and column.
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    try:
        header = next(reader, [])
    except csv.Error as err:
        raise file_error(path, f"the header has broken quoting ({err})") from err
    if _UNDECODABLE.search("".join(header)):
        raise file_error(path, "the header is not valid UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise file_error(path, f"the header names column(s) {', '.join(map(repr, repeated))} more than once")
    records, row, end = [], 0, reader.line_num

    def frame() -> pl.DataFrame:
        return pl.DataFrame({name: pl.Series(name, [r[i] or None for r in records], dtype=pl.String)
                             for i, name in enumerate(header)}) if not problems.unparsed else pl.DataFrame()

    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:
                continue
            row += 1
            if len(record) != len(header):
                problems.add(f"{len(record)} field(s), the header has {len(header)} (an unquoted delimiter or quote?)",
                             row, start)
                problems.unparsed = True
            for column, value in zip(header, record):
                bad = _UNDECODABLE.search(value)
                if bad:
                    problems.add(f"column '{column}' is not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x})", row, start)
                    problems.unparsed = True
            records.append(record)
            if len(records) == BATCH_ROWS:
                yield frame()
                records = []
    except csv.Error as err:
        what = ("a quoted field is still open at the end of the file (a stray quote, or the file is truncated)"
                if "unexpected end of data" in str(err) else f"broken quoting ({err})")
        problems.add(what, row + 1, end + 1)
        problems.unparsed = True
    if records or not row:
        yield frame()  # a header without rows still names its columns


TEXT_READERS = {
    ".jsonl": _jsonl_batches,
    ".json": _jsonl_batches,
    ".ndjson": _jsonl_batches,
    ".csv": partial(_csv_batches, delimiter=","),
    ".tsv": partial(_csv_batches, delimiter="\t"),
}


def _dataset_batches(path: Path) -> Iterator[pl.DataFrame]:
    if not ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        raise file_error(path, "a directory, but not a dataset saved with save_to_disk (no state.json); "
                                "expected a file or a dataset directory")
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged dataset directory: missing or corrupt Arrow files
        raise file_error(path, f"unreadable: damaged dataset ({describe_error(err)})") from err
    if isinstance(dataset, datasets.DatasetDict):
        raise file_error(path, f"a DatasetDict; pass one split's directory ({', '.join(dataset)})")
    yield from _arrow_batches(dataset.data.table)


def _arrow_batches(table: pa.Table) -> Iterator[pl.DataFrame]:
    """An Arrow table (memory-mapped by `datasets`) as frames of at most BATCH_ROWS rows, its schema when empty."""
    for batch in table.to_batches(max_chunksize=BATCH_ROWS) or [table.schema.empty_table()]:
        yield pl.from_arrow(batch)


def data_suffix(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" or path.suffix.lower() in TEXT_READERS


def data_file(path: Path) -> bool:
    return path.is_file() and data_suffix(path)


def _first_and_last_bytes(fh, size: int) -> bytes:
    head = fh.read(size)
    fh.seek(max(fh.seek(0, io.SEEK_END) - size, 0))
    return head + fh.read()


def _parquet_batches(path: Path, fh) -> Iterator[pl.DataFrame]:
    """Parquet files start and end with the magic bytes PAR1: a missing end is the mark of a cut-off copy."""
    ends = _first_and_last_bytes(fh, 4)
    if ends[:4] != b"PAR1":
        raise file_error(path, "unreadable: not a Parquet file (it does not start with PAR1)")
    if ends[-4:] != b"PAR1":
        raise file_error(path, "unreadable: truncated Parquet file (it does not end with the PAR1 footer)")
    try:
        # Without pre-buffering, which reads far ahead (3M pairs: 1.4 GB of RSS against 0.3 GB without).
        parquet = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)
        if parquet.metadata.num_rows == 0:
            yield pl.from_arrow(parquet.schema_arrow.empty_table())
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            yield pl.from_arrow(batch)
    except (OSError, pa.ArrowException) as err:  # a corrupt footer or page
        raise file_error(path, f"unreadable: corrupt Parquet file ({describe_error(err)})") from err


def table_batches(path: str | Path, problems: Problems) -> Iterator[pl.DataFrame]:
    """A file's rows as read, in frames of at most BATCH_ROWS rows (one empty frame naming the columns of a
    file without rows). A problem with the file as a whole raises; problems of its rows go to ``problems``,
    and once a row does not parse, the frames after it are empty (their rows are still checked for parsing)."""
    path = Path(path)
    if path.is_dir():
        yield from _dataset_batches(path)
        return
    if not path.exists():
        raise file_error(path, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix != ".parquet" and suffix not in TEXT_READERS:
        raise file_error(path, f"unknown format {suffix!r} (use .parquet, .jsonl, .csv or a datasets directory)")
    try:
        # Every format opens here, so that an unreadable file is named as such; the with below closes it.
        fh = open(path, "rb")  # noqa: SIM115
        empty = not fh.read(1)
        fh.seek(0)
    except OSError as err:
        raise file_error(path, f"unreadable ({err.strerror or type(err).__name__})") from err
    with fh:
        if empty:
            raise file_error(path, "empty file")
        yield from (_parquet_batches(path, fh) if suffix == ".parquet" else TEXT_READERS[suffix](path, fh, problems))
