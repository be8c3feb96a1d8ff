"""Read and validate training pairs and extra corpus files.

Pairs: Parquet, JSONL, CSV or a `datasets` dataset saved to disk, with columns ``query``, ``positive``,
optional ``negative`` (a string or a list of strings) and optional ``task``. Corpus files: the same
formats with a ``text`` column. Every problem is reported as one line naming the file, the row and what
is wrong (``{path}: row {n}: ...``, or ``{path}: ...`` for the file as a whole); nothing is read further
once a file has problems.

Row n is the n-th data row, counted from 1: the n-th row of a Parquet file or dataset, the n-th record of
a JSONL file or the n-th record after the header of a CSV file (the header is not a row, blank lines are
not rows, and a quoted CSV field may span lines). Where a problem found while parsing a text file sits on
another line than its row number, the line is named too: ``row 3 (line 5)``.

Accepted on purpose:
- Exact duplicate rows are kept: a repeated pair is legitimate (it weighs that pair more), and the embed
  stage stores and embeds each distinct text once anyway.
- Texts have no length cap: a long document is legitimate and the model reads only its first
  max_seq_length tokens; each distinct text is stored once, so a 1 MB text costs about 1 MB.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
import warnings
from functools import partial
from pathlib import Path

import polars as pl

from gist_mining.errors import InputError

PAIR_COLUMNS = ("query", "positive")
MAX_PROBLEMS = 20
DEFAULT_TASK = "default"
# Nothing to embed: whitespace, or invisible characters (zero-width spaces, byte order marks) only.
_BLANK = re.compile(r"[\s\u200b\u200c\u200d\u2060\ufeff]*")
# What undecodable bytes turn into when decoded with errors="surrogateescape": U+DC80..U+DCFF for 0x80..0xFF.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# Python's csv refuses fields over 128 KiB by default; long texts are accepted (see above).
_CSV_FIELD_LIMIT = 2**31 - 1


class _Problems:
    """One line per problem: the first MAX_PROBLEMS are kept, the rest counted."""

    def __init__(self, path: Path):
        self.path, self.lines, self.count = path, [], 0

    def add(self, what: str, row: int, line: int | None = None) -> None:
        self.count += 1
        if len(self.lines) < MAX_PROBLEMS:
            where = f"row {row}" if line in (None, row) else f"row {row} (line {line})"
            self.lines.append(_one_line(f"{self.path}: {where}: {what}"))

    def raise_if_any(self) -> None:
        hidden = self.count - len(self.lines)
        if self.count:
            raise InputError(self.lines + ([f"{self.path}: {hidden} more problem(s) not shown"] if hidden else []))


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _describe(err: Exception) -> str:
    """An exception's type and first line: libraries' messages run on with hints and tracebacks."""
    return f"{type(err).__name__}: {next(iter(str(err).splitlines()), '')}"


def _file_error(path: Path, what: str) -> InputError:
    return InputError([_one_line(f"{path}: {what}")])


def _read_jsonl(path: Path, data: bytes) -> pl.DataFrame:
    """JSONL parsed per line, so that a broken line or a mixed-type value is named by its row."""
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        raise _file_error(path, "a JSON array; expected JSON Lines (one object per line)")
    records, problems, row = [], _Problems(path), 0
    lines = data.split(b"\n")
    for line, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        row += 1
        # The last line of a file that does not end with a newline is where a cut-off copy breaks.
        truncated = "; the file ends mid-line, it may be truncated" if line == len(lines) else ""
        try:
            record = json.loads(raw.decode("utf-8-sig"))  # -sig: a byte order mark some editors write
        except UnicodeDecodeError as err:
            where = f"byte 0x{raw[err.start]:02x} at byte {err.start + 1} of the line"
            problems.add(f"not valid UTF-8 ({where}){truncated}", row, line)
            continue
        except json.JSONDecodeError as err:
            problems.add(f"not valid JSON at column {err.colno} ({err.msg}){truncated}", row, line)
            continue
        if not isinstance(record, dict):
            problems.add(f"expected a JSON object, got {type(record).__name__}", row, line)
            continue
        records.append(record)
    problems.raise_if_any()
    columns = sorted({key for record in records for key in record})
    # Object columns keep each value as written, so the row checks below see the real types.
    return pl.DataFrame({c: pl.Series(c, [r.get(c) for r in records], dtype=pl.Object) for c in columns})


def _read_csv(path: Path, data: bytes, delimiter: str) -> pl.DataFrame:
    """RFC 4180 CSV: quoted fields may hold delimiters, doubled quotes and line breaks. Every value is read
    as a string, and an empty field as null (a missing optional value). Row n is the n-th record after the
    header; blank lines are skipped."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Decoded anyway, bytes kept as lone surrogates, so that each bad field is named by row and column below.
        text = data.decode("utf-8-sig", errors="surrogateescape")
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, [])
    except csv.Error as err:
        raise _file_error(path, f"the header has broken quoting ({err})") from err
    if _UNDECODABLE.search("".join(header)):
        raise _file_error(path, "the header is not valid UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise _file_error(path, f"the header names column(s) {', '.join(map(repr, repeated))} more than once")
    problems, records, end = _Problems(path), [], reader.line_num
    try:
        for record in reader:
            start, end = end + 1, reader.line_num
            if not record:
                continue
            records.append(record)
            row = len(records)
            if len(record) != len(header):
                problems.add(f"{len(record)} field(s), the header has {len(header)} (an unquoted delimiter or quote?)",
                             row, start)
            for column, value in zip(header, record):
                bad = _UNDECODABLE.search(value)
                if bad:
                    problems.add(f"column '{column}' is not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x})", row, start)
    except csv.Error as err:
        what = ("a quoted field is still open at the end of the file (a stray quote, or the file is truncated)"
                if "unexpected end of data" in str(err) else f"broken quoting ({err})")
        problems.add(what, len(records) + 1, end + 1)
    problems.raise_if_any()
    return pl.DataFrame(
        {name: pl.Series(name, [r[i] or None for r in records], dtype=pl.String) for i, name in enumerate(header)})


TEXT_READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".csv": partial(_read_csv, delimiter=","),
    ".tsv": partial(_read_csv, delimiter="\t"),
}


def _read_dataset(path: Path) -> pl.DataFrame:
    if not ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        raise _file_error(path, "a directory, but not a dataset saved with save_to_disk (no state.json); "
                                "expected a file or a dataset directory")
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged dataset directory: missing or corrupt Arrow files
        raise _file_error(path, f"unreadable: damaged dataset ({_describe(err)})") from err
    if isinstance(dataset, datasets.DatasetDict):
        raise _file_error(path, f"a DatasetDict; pass one split's directory ({', '.join(dataset)})")
    return pl.from_arrow(dataset.data.table)


def _first_and_last_bytes(fh, size: int) -> bytes:
    head = fh.read(size)
    fh.seek(max(fh.seek(0, io.SEEK_END) - size, 0))
    return head + fh.read()


def _read_parquet(path: Path, ends: bytes) -> pl.DataFrame:
    """Parquet files start and end with the magic bytes PAR1: a missing end is the mark of a cut-off copy."""
    if ends[:4] != b"PAR1":
        raise _file_error(path, "unreadable: not a Parquet file (it does not start with PAR1)")
    if ends[-4:] != b"PAR1":
        raise _file_error(path, "unreadable: truncated Parquet file (it does not end with the PAR1 footer)")
    try:
        return pl.read_parquet(path)
    except Exception as err:  # a corrupt footer or page
        raise _file_error(path, f"unreadable: corrupt Parquet file ({_describe(err)})") from err


def read_table(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if path.is_dir():
        return _read_dataset(path)
    if not path.exists():
        raise _file_error(path, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix != ".parquet" and suffix not in TEXT_READERS:
        raise _file_error(path, f"unknown format {suffix!r} (use .parquet, .jsonl, .csv or a datasets directory)")
    try:
        with open(path, "rb") as fh:  # every format opens here, so that an unreadable file is named as such
            data = fh.read() if suffix in TEXT_READERS else _first_and_last_bytes(fh, 4)
    except OSError as err:
        raise _file_error(path, f"unreadable ({err.strerror or type(err).__name__})") from err
    if not data:
        raise _file_error(path, "empty file")
    return _read_parquet(path, data) if suffix == ".parquet" else TEXT_READERS[suffix](path, data)


def _text_problem(value) -> str | None:
    """What makes ``value`` unusable as a text, worded to follow "is" or "holds"; None when it is usable."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        return f"{type(value).__name__}, expected a string"
    if _BLANK.fullmatch(value):
        return "empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON allows a \ud83d escape without its pair; no text can hold it
        return f"invalid Unicode (an unpaired surrogate \\u{ord(value[err.start]):04x})"
    return None


def _check_texts(problems: _Problems, column: str, values, *, required: bool) -> None:
    for row, value in enumerate(values, start=1):
        problem = _text_problem(value)
        if problem and (required or value is not None):
            problems.add(f"column '{column}' is {problem}", row)


def _written_list(text: str) -> bool:
    """Whether a text is a list of strings written out as one string, as CSV exports of list columns do."""
    if not (text.startswith("[") and text.endswith("]")):
        return False
    try:
        with warnings.catch_warnings():  # an odd escape in the text would print a SyntaxWarning
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return False
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_negatives(problems: _Problems, values) -> None:
    item_wording = {"null": "a null", "empty": "an empty string"}
    for row, value in enumerate(values, start=1):
        if value is None:
            continue  # a null negative means none given
        if isinstance(value, str):
            problem = _text_problem(value)
            if problem:
                problems.add(f"column 'negative' is {problem}", row)
            elif _written_list(value):
                problems.add(f"column 'negative' is a list written as one string ({value[:60]!r}); give a real list of "
                             "strings (JSONL, Parquet) or one negative per cell (CSV)", row)
        elif isinstance(value, list):
            problem = next(filter(None, map(_text_problem, value)), None)
            if problem:
                problems.add(f"column 'negative' holds {item_wording.get(problem, problem)}", row)
        else:
            problems.add(f"column 'negative' is {type(value).__name__}, expected a string or a list of strings", row)


def _column_values(frame: pl.DataFrame, column: str) -> list:
    return frame.get_column(column).to_list()


def _require(path: Path, frame: pl.DataFrame, columns) -> None:
    if frame.height == 0:
        raise _file_error(path, "no rows")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError([f"{path}: missing column '{c}' (has: {', '.join(frame.columns) or 'none'})" for c in missing])


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Validated pairs as columns query, positive, negatives (list of strings) and task, one row per input
    row in order (duplicates kept, see the module docstring)."""
    path = Path(path)
    frame = read_table(path)
    _require(path, frame, PAIR_COLUMNS)
    problems = _Problems(path)
    for column in PAIR_COLUMNS:
        _check_texts(problems, column, _column_values(frame, column), required=True)
    negatives = _column_values(frame, "negative") if "negative" in frame.columns else [None] * frame.height
    _check_negatives(problems, negatives)
    tasks = _column_values(frame, "task") if "task" in frame.columns else [DEFAULT_TASK] * frame.height
    _check_texts(problems, "task", tasks, required=False)
    problems.raise_if_any()
    negatives = [[] if v is None else ([v] if isinstance(v, str) else list(v)) for v in negatives]
    return pl.DataFrame(
        {
            "query": _column_values(frame, "query"),
            "positive": _column_values(frame, "positive"),
            "negatives": pl.Series("negatives", negatives, dtype=pl.List(pl.String)),
            "task": [t if t is not None else DEFAULT_TASK for t in tasks],
        }
    )


def read_corpus(path: str | Path) -> list[str]:
    path = Path(path)
    frame = read_table(path)
    _require(path, frame, ("text",))
    values = _column_values(frame, "text")
    problems = _Problems(path)
    _check_texts(problems, "text", values, required=True)
    problems.raise_if_any()
    return values
