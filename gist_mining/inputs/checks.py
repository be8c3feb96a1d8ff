"""The checks of a column's texts and negatives: blank, undecodable or mistyped values, a positive equal to its query."""

from __future__ import annotations

import ast
import re
import warnings

import polars as pl

from gist_mining.inputs.problems import Problems


# Nothing to embed: whitespace, or invisible characters (zero-width spaces, byte order marks) only.
BLANK = re.compile(r"[\s\u200b\u200c\u200d\u2060\ufeff]*")


# A superset of what BLANK matches, for Polars' regex engine: its \s lacks the separators U+001C..U+001F that
# Python's has. The texts it matches are checked by text_problem.
_BLANK_SUPERSET = r"^[\s\x1c-\x1f\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]*$"


def text_problem(value) -> str | None:
    """What makes ``value`` unusable as a text, worded to follow "is" or "holds"; None when it is usable."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        return f"{type(value).__name__}, expected a string"
    if BLANK.fullmatch(value):
        return "empty"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # JSON allows a \ud83d escape without its pair; no text can hold it
        return f"invalid Unicode (an unpaired surrogate \\u{ord(value[err.start]):04x})"
    return None


def check_texts(problems: Problems, column: str, values: pl.Series, first_row: int, *, required: bool) -> None:
    """Row problems of a text column; a string column is screened in Polars and only its suspects checked here."""
    if values.dtype == pl.String:
        suspect = values.is_null() | values.str.contains(_BLANK_SUPERSET)
        rows = suspect.arg_true().to_list()
        candidates = zip(rows, values.gather(rows).to_list())
    else:
        candidates = enumerate(values.to_list())
    for i, value in candidates:
        problem = text_problem(value)
        if problem and (required or value is not None):
            problems.add(f"column '{column}' is {problem}", first_row + i)


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


def _negative_problem(value) -> str | None:
    item_wording = {"null": "a null", "empty": "an empty string"}
    if value is None:
        return None  # a null negative means none given
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            return f"is {problem}"
        if _written_list(value):
            return (f"is a list written as one string ({value[:60]!r}); give a real list of strings (JSONL, "
                    "Parquet) or one negative per cell (CSV)")
        return None
    if isinstance(value, list):
        problem = next(filter(None, map(text_problem, value)), None)
        return f"holds {item_wording.get(problem, problem)}" if problem else None
    return f"is {type(value).__name__}, expected a string or a list of strings"


def check_negatives(problems: Problems, column: str, values: pl.Series, first_row: int) -> None:
    """Row problems of a negative column."""
    if values.dtype == pl.String:  # one negative per row: only blank texts and written lists need a look
        suspect = values.str.contains(_BLANK_SUPERSET) | (values.str.starts_with("[") & values.str.ends_with("]"))
    elif values.dtype == pl.List(pl.String):
        suspect = values.list.eval(pl.element().is_null() | pl.element().str.contains(_BLANK_SUPERSET)).list.any()
    else:
        suspect = None
    if suspect is None:
        candidates = enumerate(values.to_list())
    else:
        rows = suspect.fill_null(False).arg_true().to_list()
        candidates = zip(rows, values.gather(rows).to_list())
    for i, value in candidates:
        problem = _negative_problem(value)
        if problem:
            problems.add(f"column '{column}' {problem}", first_row + i)


def as_negative_lists(values: pl.Series) -> pl.Series:
    """A checked negative column as lists of strings: a string is a list of one, a null none given."""
    if values.dtype == pl.String:
        return pl.select(pl.concat_list(pl.lit(values)).list.drop_nulls()).to_series()
    if values.dtype == pl.List(pl.String):
        return values.fill_null(pl.lit([], dtype=pl.List(pl.String)))
    listed = [[] if v is None else ([v] if isinstance(v, str) else list(v)) for v in values.to_list()]
    return pl.Series(listed, dtype=pl.List(pl.String))


def check_distinct(problems: Problems, query: str, positive: str, frame: pl.DataFrame, first_row: int) -> None:
    """A positive equal to its query teaches nothing and, mined, leaves the anchor one text; blank ones are
    named by check_texts already."""
    queries, positives = frame.get_column(query), frame.get_column(positive)
    if queries.dtype == positives.dtype == pl.String:
        rows = ((queries == positives) & ~queries.str.contains(_BLANK_SUPERSET)).fill_null(False).arg_true().to_list()
    else:
        rows = [i for i, (q, p) in enumerate(zip(queries.to_list(), positives.to_list()))
                if isinstance(q, str) and q == p and text_problem(q) is None]
    for i in rows:
        problems.add(f"column '{positive}' equals column '{query}' (a positive must differ from its query)", first_row + i)


def as_strings(values: pl.Series) -> pl.Series:
    """A checked text column as a string column (JSON records arrive as Python objects)."""
    return pl.Series(values.name, values.to_list(), dtype=pl.String) if values.dtype == pl.Object else values.cast(pl.String)
