"""Read and validate training pairs and extra corpus files.

Pairs: Parquet, JSONL, CSV or a `datasets` dataset saved to disk, with columns ``query``, ``positive``,
optional ``negative`` (a string or a list of strings) and optional ``task``. Corpus files: the same
formats with a ``text`` column. Every problem is reported as one line naming the file, the 1-based
row and what is wrong; nothing is read further once a file has problems.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from gist_mining.errors import InputError

PAIR_COLUMNS = ("query", "positive")
MAX_PROBLEMS = 20
DEFAULT_TASK = "default"


def _read_jsonl(path: Path) -> pl.DataFrame:
    """JSONL parsed per line so that a broken line or a mixed-type value is named by its row."""
    records, problems = [], []
    with open(path, encoding="utf-8") as fh:
        for row, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{path}: row {row}: not valid JSON ({err.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"{path}: row {row}: expected a JSON object, got {type(record).__name__}")
                continue
            records.append(record)
    if problems:
        raise InputError(problems[:MAX_PROBLEMS])
    columns = sorted({key for record in records for key in record})
    # Object columns keep each value as written, so the row checks below see the real types.
    return pl.DataFrame({c: pl.Series(c, [r.get(c) for r in records], dtype=pl.Object) for c in columns})


def read_table(path: str | Path) -> pl.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError([f"{path}: no such file or directory"])
    try:
        if path.is_dir():
            import datasets

            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                raise InputError([f"{path}: a DatasetDict; pass one split's directory ({', '.join(dataset)})"])
            return pl.from_arrow(dataset.data.table)
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".jsonl", ".json", ".ndjson"):
            return _read_jsonl(path)
        if suffix in (".csv", ".tsv"):
            return pl.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
    except InputError:
        raise
    except Exception as err:  # unreadable: corrupt Parquet, bad CSV quoting, undecodable bytes
        raise InputError([f"{path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})"]) from err
    raise InputError([f"{path}: unknown format {suffix!r} (use .parquet, .jsonl, .csv or a datasets directory)"])


def _string_problems(path: Path, column: str, values, *, required: bool) -> list[str]:
    problems = []
    for row, value in enumerate(values, start=1):
        if value is None:
            if required:
                problems.append(f"{path}: row {row}: column '{column}' is null")
        elif not isinstance(value, str):
            problems.append(f"{path}: row {row}: column '{column}' is {type(value).__name__}, expected a string")
        elif not value.strip():
            problems.append(f"{path}: row {row}: column '{column}' is empty")
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def _negative_problems(path: Path, values) -> list[str]:
    problems = []
    for row, value in enumerate(values, start=1):
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is None and not isinstance(value, (list, tuple)):
                continue  # a null negative means none given
            if not isinstance(item, str):
                problems.append(f"{path}: row {row}: column 'negative' holds {type(item).__name__}, expected strings")
                break
            if not item.strip():
                problems.append(f"{path}: row {row}: column 'negative' holds an empty string")
                break
        if len(problems) >= MAX_PROBLEMS:
            break
    return problems


def _column_values(frame: pl.DataFrame, column: str) -> list:
    return frame.get_column(column).to_list()


def _require(path: Path, frame: pl.DataFrame, columns) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError([f"{path}: missing column '{c}' (has: {', '.join(frame.columns) or 'none'})" for c in missing])
    if frame.height == 0:
        raise InputError([f"{path}: no rows"])


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Validated pairs as columns query, positive, negatives (list of strings) and task."""
    path = Path(path)
    frame = read_table(path)
    _require(path, frame, PAIR_COLUMNS)
    problems = []
    for column in PAIR_COLUMNS:
        problems += _string_problems(path, column, _column_values(frame, column), required=True)
    negatives = _column_values(frame, "negative") if "negative" in frame.columns else [None] * frame.height
    problems += _negative_problems(path, negatives)
    tasks = _column_values(frame, "task") if "task" in frame.columns else [DEFAULT_TASK] * frame.height
    problems += _string_problems(path, "task", tasks, required=False)
    if problems:
        raise InputError(problems[:MAX_PROBLEMS])
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
    problems = _string_problems(path, "text", values, required=True)
    if problems:
        raise InputError(problems)
    return values
