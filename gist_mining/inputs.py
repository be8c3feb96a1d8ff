"""Read and validate training pairs and extra corpus files, in row batches (memory holds a batch, never a file).

Pairs: Parquet, JSONL, CSV or a `datasets` dataset saved to disk, a folder or glob of such files, or a Hub
dataset (an id or an hf://datasets/ path, through the Hugging Face cache: ``input_files``), with columns for
the query and its positive, optional negatives (a string or a list of strings per column) and an optional
``task``; which columns are which is given (--columns) or recognised as sentence-transformers' data sets name
them (``resolve_columns``). Corpus files: the same forms with a ``text`` column. A retrieval layout (queries,
corpus and qrels as BEIR lays them out) becomes pairs and a corpus (``retrieval_pairs``). Every problem is
reported as one line naming the file, the row and what is wrong (``{path}: row {n}: ...``, or ``{path}: ...``
for the file as a whole); every row of a file is checked, and once a row of a text file does not parse, the
rows after it are only parsed.

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
import glob
import io
import json
import re
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining import medi
from gist_mining.bad_rows import SkippedRows
from gist_mining.errors import InputError, UsageError

MAX_PROBLEMS = 20
# Rows read, checked and handed on at a time: memory holds a batch, never the file.
BATCH_ROWS = 100_000
DEFAULT_TASK = "default"
# Nothing to embed: whitespace, or invisible characters (zero-width spaces, byte order marks) only.
_BLANK = re.compile(r"[\s\u200b\u200c\u200d\u2060\ufeff]*")
# A superset of what _BLANK matches, for Polars' regex engine: its \s lacks the separators U+001C..U+001F that
# Python's has. The texts it matches are checked by _text_problem.
_BLANK_SUPERSET = r"^[\s\x1c-\x1f\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]*$"
# What undecodable bytes turn into when decoded with errors="surrogateescape": U+DC80..U+DCFF for 0x80..0xFF.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
# Python's csv refuses fields over 128 KiB by default; long texts are accepted (see above).
_CSV_FIELD_LIMIT = 2**31 - 1


class _Problems:
    """One line per problem: the first MAX_PROBLEMS are kept, the rest counted."""

    def __init__(self, path: Path, keep_rows: bool = False):
        self.path, self.lines, self.count = path, [], 0
        self.unparsed = False  # a row that does not parse: the rows after it are only parsed, not checked
        # --skip-bad-rows: every problem's row and what is wrong (a batch's: the caller keeps one per batch)
        self.rows: list[tuple[int, str]] | None = [] if keep_rows else None

    def add(self, what: str, row: int, line: int | None = None) -> None:
        self.count += 1
        if self.rows is not None:
            self.rows.append((row, what))
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


def _jsonl_batches(path: Path, fh, problems: _Problems) -> Iterator[pl.DataFrame]:
    """JSONL parsed per line, so that a broken line or a mixed-type value is named by its row. Once a line
    does not parse, later lines are only checked for parsing: the row numbers of the batches would be off."""
    if fh.read(1 << 16).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        raise _file_error(path, "a JSON array; expected JSON Lines (one object per line)")
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


def _csv_batches(path: Path, fh, problems: _Problems, delimiter: str) -> Iterator[pl.DataFrame]:
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
        raise _file_error(path, f"the header has broken quoting ({err})") from err
    if _UNDECODABLE.search("".join(header)):
        raise _file_error(path, "the header is not valid UTF-8")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise _file_error(path, f"the header names column(s) {', '.join(map(repr, repeated))} more than once")
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
        raise _file_error(path, "a directory, but not a dataset saved with save_to_disk (no state.json); "
                                "expected a file or a dataset directory")
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as err:  # a damaged dataset directory: missing or corrupt Arrow files
        raise _file_error(path, f"unreadable: damaged dataset ({_describe(err)})") from err
    if isinstance(dataset, datasets.DatasetDict):
        raise _file_error(path, f"a DatasetDict; pass one split's directory ({', '.join(dataset)})")
    yield from _arrow_batches(dataset.data.table)


def _arrow_batches(table: pa.Table) -> Iterator[pl.DataFrame]:
    """An Arrow table (memory-mapped by `datasets`) as frames of at most BATCH_ROWS rows, its schema when empty."""
    for batch in table.to_batches(max_chunksize=BATCH_ROWS) or [table.schema.empty_table()]:
        yield pl.from_arrow(batch)


@dataclass(frozen=True)
class HubSelection:
    """Which files of a Hub dataset an input takes (--input-subset, --input-split, --input-revision)."""

    split: str = "train"
    subset: str | None = None
    revision: str | None = None


HUB_PATHS = "hf://datasets/"
# owner/name, as the Hub spells dataset ids; a name ending like a data file is a missing local file instead.
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def input_files(given: str | Path, hub: HubSelection = HubSelection()) -> list[Path]:
    """The files an --input or --corpus names: a file, a dataset saved with save_to_disk, a folder of data files
    (Spark's or pyarrow's part files; hidden and ``_`` files such as _SUCCESS skipped), a glob of them, a Hub
    dataset id or an ``hf://datasets/OWNER/NAME[@REVISION]/PATH`` (``hub_files``); sorted."""
    path = Path(given)
    text = str(given)
    if text.startswith(HUB_PATHS) or (not path.exists() and _HUB_ID.fullmatch(text) and not _data_suffix(path)):
        return hub_files(text, hub)
    if not path.exists() and glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if _data_file(Path(p)) or Path(p).is_dir())
        if not files:
            raise _file_error(path, "no file matches this pattern")
        return [f for match in files for f in input_files(match)]
    if not path.is_dir() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return [path]
    files = sorted(p for p in path.rglob("*") if _data_file(p) and not any(
        part.startswith((".", "_")) for part in p.relative_to(path).parts))
    if not files:
        raise _file_error(path, "a directory, but neither a dataset saved with save_to_disk (no state.json) nor a "
                                "folder of .parquet, .jsonl or .csv files")
    return files


def hub_files(given: str, hub: HubSelection) -> list[Path]:
    """A Hub dataset's data files for one subset and split, through the standard Hugging Face cache (HF_HOME;
    HF_HUB_OFFLINE=1 serves it without asking the Hub). The split's files are those its dataset card's configs
    name, else those `datasets` finds by its naming conventions (data/train-00000-of-00001.parquet, ...)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if given.startswith(HUB_PATHS):  # hf://datasets/OWNER/NAME[@REVISION]/PATH
        owner, name, inner = (given.removeprefix(HUB_PATHS).split("/", 2) + ["", ""])[:3]
        repo, _, revision = f"{owner}/{name}".partition("@")
        revision = revision or hub.revision
    else:
        repo, inner, revision = given, "", hub.revision

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(snapshot_download(repo, repo_type="dataset", revision=revision, allow_patterns=patterns))
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
            recipe = f"hf download {repo} --repo-type dataset" + (f" --revision {revision}" if revision else "")
            raise _file_error(Path(given), f"a Hub dataset neither in the Hugging Face cache nor reachable "
                                           f"({_describe(err)}); fetch it where the Hub is reachable with `{recipe}` "
                                           "and copy that machine's HF_HOME cache here") from err

    if inner:
        folder = fetch([inner, f"{inner}/**"])
        found = sorted({f for match in folder.glob(inner) for f in ([match] if match.is_file() else match.rglob("*"))
                        if _data_file(f)})
    else:
        splits = _hub_splits(fetch(["README.md"]), hub.subset, given)
        if splits is None:  # no configs in the card: the data files themselves, named by convention
            splits = _conventional_splits(fetch(["*", "**/*"]), hub.subset, given)
        if hub.split not in splits:
            raise _file_error(Path(given), f"no split {hub.split!r}{f' in subset {hub.subset!r}' if hub.subset else ''}"
                                           f" (has: {', '.join(splits) or 'none'}); choose one with --input-split")
        folder = fetch(splits[hub.split])
        found = sorted({p for pattern in splits[hub.split] for p in folder.glob(pattern) if _data_file(p)})
    if not found:
        raise _file_error(Path(given), "a Hub dataset without data files for this split (.parquet, .jsonl, .csv)")
    return found


def _hub_splits(folder: Path, subset: str | None, given: str) -> dict[str, list[str]] | None:
    """{split: file patterns} of a subset (None: the card's default) from a dataset card's configs; None when
    the card names none."""
    from datasets.data_files import sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    if not (folder / "README.md").exists():
        return None
    configs = MetadataConfigs.from_dataset_card_data(DatasetCard.load(folder / "README.md").data)
    if not configs:
        return None
    default = next((n for n, c in configs.items() if c.get("default")), "default" if "default" in configs else None)
    name = subset or default or (next(iter(configs)) if len(configs) == 1 else None)
    if name not in configs:
        raise _file_error(Path(given), f"{'no subset ' + repr(subset) if subset else 'several subsets'} "
                                       f"(has: {', '.join(configs)}); choose one with --input-subset")
    return {split: list(patterns) for split, patterns in sanitize_patterns(configs[name].get("data_files", {})).items()}


def _conventional_splits(folder: Path, subset: str | None, given: str) -> dict[str, list[str]]:
    from datasets.data_files import EmptyDatasetError, get_data_patterns

    base = folder / subset if subset else folder
    if subset and not base.is_dir():
        raise _file_error(Path(given), f"no subset {subset!r} (no folder of that name, and no configs in its card)")
    try:
        patterns = get_data_patterns(str(base))
    except EmptyDatasetError:
        return {}
    prefix = f"{subset}/" if subset else ""
    return {split: [prefix + p for p in found] for split, found in patterns.items()}


def _data_suffix(path: Path) -> bool:
    return path.suffix.lower() == ".parquet" or path.suffix.lower() in TEXT_READERS


def _data_file(path: Path) -> bool:
    return path.is_file() and _data_suffix(path)


def _first_and_last_bytes(fh, size: int) -> bytes:
    head = fh.read(size)
    fh.seek(max(fh.seek(0, io.SEEK_END) - size, 0))
    return head + fh.read()


def _parquet_batches(path: Path, fh) -> Iterator[pl.DataFrame]:
    """Parquet files start and end with the magic bytes PAR1: a missing end is the mark of a cut-off copy."""
    ends = _first_and_last_bytes(fh, 4)
    if ends[:4] != b"PAR1":
        raise _file_error(path, "unreadable: not a Parquet file (it does not start with PAR1)")
    if ends[-4:] != b"PAR1":
        raise _file_error(path, "unreadable: truncated Parquet file (it does not end with the PAR1 footer)")
    try:
        # Without pre-buffering, which reads far ahead (3M pairs: 1.4 GB of RSS against 0.3 GB without).
        parquet = pq.ParquetFile(fh, pre_buffer=False, buffer_size=1 << 20)
        if parquet.metadata.num_rows == 0:
            yield pl.from_arrow(parquet.schema_arrow.empty_table())
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):
            yield pl.from_arrow(batch)
    except (OSError, pa.ArrowException) as err:  # a corrupt footer or page
        raise _file_error(path, f"unreadable: corrupt Parquet file ({_describe(err)})") from err


def table_batches(path: str | Path, problems: _Problems) -> Iterator[pl.DataFrame]:
    """A file's rows as read, in frames of at most BATCH_ROWS rows (one empty frame naming the columns of a
    file without rows). A problem with the file as a whole raises; problems of its rows go to ``problems``,
    and once a row does not parse, the frames after it are empty (their rows are still checked for parsing)."""
    path = Path(path)
    if path.is_dir():
        yield from _dataset_batches(path)
        return
    if not path.exists():
        raise _file_error(path, "no such file or directory")
    suffix = path.suffix.lower()
    if suffix != ".parquet" and suffix not in TEXT_READERS:
        raise _file_error(path, f"unknown format {suffix!r} (use .parquet, .jsonl, .csv or a datasets directory)")
    try:
        # Every format opens here, so that an unreadable file is named as such; the with below closes it.
        fh = open(path, "rb")  # noqa: SIM115
        empty = not fh.read(1)
        fh.seek(0)
    except OSError as err:
        raise _file_error(path, f"unreadable ({err.strerror or type(err).__name__})") from err
    with fh:
        if empty:
            raise _file_error(path, "empty file")
        yield from (_parquet_batches(path, fh) if suffix == ".parquet" else TEXT_READERS[suffix](path, fh, problems))


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


def _check_texts(problems: _Problems, column: str, values: pl.Series, first_row: int, *, required: bool) -> None:
    """Row problems of a text column; a string column is screened in Polars and only its suspects checked here."""
    if values.dtype == pl.String:
        suspect = values.is_null() | values.str.contains(_BLANK_SUPERSET)
        rows = suspect.arg_true().to_list()
        candidates = zip(rows, values.gather(rows).to_list())
    else:
        candidates = enumerate(values.to_list())
    for i, value in candidates:
        problem = _text_problem(value)
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
        problem = _text_problem(value)
        if problem:
            return f"is {problem}"
        if _written_list(value):
            return (f"is a list written as one string ({value[:60]!r}); give a real list of strings (JSONL, "
                    "Parquet) or one negative per cell (CSV)")
        return None
    if isinstance(value, list):
        problem = next(filter(None, map(_text_problem, value)), None)
        return f"holds {item_wording.get(problem, problem)}" if problem else None
    return f"is {type(value).__name__}, expected a string or a list of strings"


def _check_negatives(problems: _Problems, column: str, values: pl.Series, first_row: int) -> None:
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


def _negative_lists(values: pl.Series) -> pl.Series:
    """A checked negative column as lists of strings: a string is a list of one, a null none given."""
    if values.dtype == pl.String:
        return pl.select(pl.concat_list(pl.lit(values)).list.drop_nulls()).to_series()
    if values.dtype == pl.List(pl.String):
        return values.fill_null(pl.lit([], dtype=pl.List(pl.String)))
    listed = [[] if v is None else ([v] if isinstance(v, str) else list(v)) for v in values.to_list()]
    return pl.Series(listed, dtype=pl.List(pl.String))


# Pairs as sentence-transformers' data sets name them, tried in order when --columns does not name them.
PAIR_CONVENTIONS = (("query", "positive"), ("anchor", "positive"), ("query", "answer"), ("question", "answer"),
                    ("sentence1", "sentence2"), ("query", "pos"))  # the last: MEDI's (gist_mining.medi)
NEGATIVE_NAMES = ("negative", "negatives", "neg")  # the first present; else negative_1 .. negative_n
TASK_NAMES = ("task", "task_name", "task_type")  # the first present; the last two: MEDI's
ROLES = {"pairs": ("query", "positive", "negative", "task"), "corpus": ("text",)}
_NUMBERED_NEGATIVE = re.compile(r"negative_(\d+)")


def parse_columns(text: str | None) -> dict[str, str]:
    """``--columns query=question,positive=answer,negative=hard_negative,task=source`` as {role: column}."""
    if not text:
        return {}
    roles = [r for kind in ROLES.values() for r in kind]
    given = {}
    for item in text.split(","):
        role, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not column or role not in roles:
            raise UsageError(f"--columns takes ROLE=COLUMN items separated by commas, ROLE one of {', '.join(roles)}; "
                             f"not {item!r}")
        given[role] = column
    return given


def resolve_columns(path: Path, columns: list[str], kind: str, given: dict[str, str]) -> dict[str, list[str]]:
    """Which of a file's ``columns`` play which role ({role: [column, ...]}; several only for negatives): those
    ``given`` (--columns), the rest as the project, sentence-transformers and MEDI name them (PAIR_CONVENTIONS;
    negatives NEGATIVE_NAMES, else ``negative_1`` .. ``negative_n``; the task TASK_NAMES)."""
    has = f"has: {', '.join(columns) or 'none'}"
    given = {role: column for role, column in given.items() if role in ROLES[kind]}
    for role, column in given.items():
        if column not in columns:
            raise _file_error(path, f"--columns takes '{column}' as {role}, but there is no such column ({has})")
    taken = set(given.values())
    if kind == "corpus":
        if "text" not in given and "text" not in columns:
            raise _file_error(path, f"missing column 'text' ({has}); name it with --columns text=COLUMN")
        return {"text": [given.get("text", "text")]}
    roles = {role: [column] for role, column in given.items()}
    if not {"query", "positive"} <= roles.keys():
        for query, positive in PAIR_CONVENTIONS:
            want = {"query": roles.get("query", [query])[0], "positive": roles.get("positive", [positive])[0]}
            if all(c in columns for c in want.values()) and want["query"] != want["positive"]:
                roles.update({role: [column] for role, column in want.items()})
                break
        else:
            raise _file_error(path, f"no columns to take as query and positive ({has}); expected one of "
                                    f"{', '.join('/'.join(c) for c in PAIR_CONVENTIONS)}, or name them with "
                                    "--columns query=COLUMN,positive=COLUMN")
    taken |= {c for cs in roles.values() for c in cs}
    if "negative" not in roles:
        numbered = sorted((int(m.group(1)), c) for c in columns if (m := _NUMBERED_NEGATIVE.fullmatch(c)) and c not in taken)
        named = [c for c in NEGATIVE_NAMES if c in columns and c not in taken][:1]
        negatives = named or [c for _, c in numbered]
        if negatives:
            roles["negative"] = negatives
    task = next((c for c in TASK_NAMES if c in columns and c not in taken), None)
    if "task" not in roles and task:
        roles["task"] = [task]
    return roles


def describe_columns(roles: dict[str, list[str]]) -> str:
    """How the log says which columns were taken as what."""
    return ", ".join(f"{' + '.join(repr(c) for c in columns)} as {role}" for role, columns in roles.items())


def _checked_batches(path: Path, kind: str, given: dict[str, str], check,
                     skipped: SkippedRows | None = None) -> Generator[pl.DataFrame, None, dict]:
    """The frames of ``path`` through ``check(problems, frame, first_row, roles)``, which adds row problems and
    returns the validated frame; a frame is yielded only while the file has no problem, and the file's problems
    raise at its end (every row is checked: the count of problems is complete). Returns the roles of its
    columns (resolve_columns). With ``skipped`` (--skip-bad-rows), rows that fail ``check`` are recorded there
    and left out instead (a frame of pairs then says each row's ``source_row``); a file that does not parse
    still raises."""
    path = Path(path)
    problems, roles, rows = _Problems(path), None, 0
    for frame in table_batches(path, problems):
        if problems.unparsed:
            continue
        if roles is None:
            roles = resolve_columns(path, frame.columns, kind, given)
            if kind == "pairs":
                roles = medi.instruction_roles(frame, roles)
        if frame.height:
            for name in (c for cs in roles.values() for c in cs):  # a key absent from a batch of JSON records
                if name not in frame.columns:
                    frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
            bad = _Problems(path, keep_rows=True) if skipped is not None else problems
            checked = check(bad, frame, rows + 1, roles)
            if skipped is not None:
                kept = _skip_rows(skipped, path, bad.rows, frame, rows + 1)
                if bad.rows:  # checked again without its bad rows: now valid
                    checked = check(problems, kept.drop("source_row"), rows + 1, roles)
                if isinstance(checked, pl.DataFrame):  # pairs: anchors keep their rows' numbers
                    checked = checked.with_columns(kept.get_column("source_row"))
            if not problems.count:
                yield checked
        rows += frame.height
    if not problems.unparsed and rows == 0:
        raise _file_error(path, "no rows")
    problems.raise_if_any()
    return roles


def _skip_rows(skipped: SkippedRows, path: Path, problems: list[tuple[int, str]], frame: pl.DataFrame,
               first_row: int) -> pl.DataFrame:
    """``frame`` less the rows with ``problems`` (recorded in ``skipped``), with each row's number as source_row."""
    numbered = frame.with_columns(pl.int_range(first_row, first_row + frame.height, dtype=pl.Int64).alias("source_row"))
    if not problems:
        return numbered
    skipped.add(path, problems)
    return numbered.filter(~pl.col("source_row").is_in(sorted({row for row, _ in problems})))


def _check_distinct(problems: _Problems, query: str, positive: str, frame: pl.DataFrame, first_row: int) -> None:
    """A positive equal to its query teaches nothing and, mined, leaves the anchor one text; blank ones are
    named by _check_texts already."""
    queries, positives = frame.get_column(query), frame.get_column(positive)
    if queries.dtype == positives.dtype == pl.String:
        rows = ((queries == positives) & ~queries.str.contains(_BLANK_SUPERSET)).fill_null(False).arg_true().to_list()
    else:
        rows = [i for i, (q, p) in enumerate(zip(queries.to_list(), positives.to_list()))
                if isinstance(q, str) and q == p and _text_problem(q) is None]
    for i in rows:
        problems.add(f"column '{positive}' equals column '{query}' (a positive must differ from its query)", first_row + i)


def _check_pairs(problems: _Problems, frame: pl.DataFrame, first_row: int, roles: dict[str, list[str]],
                 instructions: str = medi.MODES[0]) -> pl.DataFrame:
    (query,), (positive,) = roles["query"], roles["positive"]
    frame = medi.with_instructions(problems, frame, first_row, roles, instructions)
    for column in (query, positive):
        _check_texts(problems, column, frame.get_column(column), first_row, required=True)
    _check_distinct(problems, query, positive, frame, first_row)
    negatives = roles.get("negative", [])
    for column in negatives:
        _check_negatives(problems, column, frame.get_column(column), first_row)
    tasks = (frame.get_column(roles["task"][0]) if "task" in roles
             else pl.repeat(DEFAULT_TASK, frame.height, eager=True))
    _check_texts(problems, roles.get("task", ["task"])[0], tasks, first_row, required=False)
    if problems.count:
        return frame
    if negatives:
        lists = pl.DataFrame([_negative_lists(frame.get_column(c)).alias(str(i)) for i, c in enumerate(negatives)])
        negative_lists = lists.select(pl.concat_list(pl.all()).alias("negatives")).to_series()
    else:
        negative_lists = pl.Series(dtype=pl.List(pl.String)).extend_constant([], frame.height)
    return pl.DataFrame({"query": _strings(frame.get_column(query)), "positive": _strings(frame.get_column(positive)),
                         "negatives": negative_lists.alias("negatives"),
                         "task": _strings(tasks).fill_null(DEFAULT_TASK).alias("task")})


def _strings(values: pl.Series) -> pl.Series:
    """A checked text column as a string column (JSON records arrive as Python objects)."""
    return pl.Series(values.name, values.to_list(), dtype=pl.String) if values.dtype == pl.Object else values.cast(pl.String)


def pair_batches(path: str | Path, columns: dict[str, str] | None = None,
                 instructions: str = medi.MODES[0], skipped: SkippedRows | None = None
                 ) -> Generator[pl.DataFrame, None, dict]:
    """Validated pairs in frames of at most BATCH_ROWS rows, with columns query, positive, negatives (list of
    strings) and task, one row per input row in order (duplicates kept, see the module docstring). The file's
    problems raise once it is read to its end: a consumer must not keep what it took from a file that raises.
    ``columns``: --columns' {role: column}; returns the roles of the file's columns (see resolve_columns).
    ``instructions``: what becomes of MEDI-style instructions, dropped or prepended (gist_mining.medi).
    ``skipped``: leave out the rows that fail the checks, recorded there (_checked_batches)."""
    return _checked_batches(Path(path), "pairs", columns or {}, partial(_check_pairs, instructions=instructions),
                            skipped)


def _check_corpus(problems: _Problems, frame: pl.DataFrame, first_row: int, roles: dict[str, list[str]]) -> pl.Series:
    (column,) = roles["text"]
    _check_texts(problems, column, frame.get_column(column), first_row, required=True)
    return _strings(frame.get_column(column)).alias("text") if not problems.count else frame.get_column(column)


def corpus_batches(path: str | Path, columns: dict[str, str] | None = None,
                   skipped: SkippedRows | None = None) -> Generator[pl.Series, None, dict]:
    """A corpus file's column ``text`` (or --columns' text=COLUMN), validated, in series of at most BATCH_ROWS
    texts (as pair_batches)."""
    return _checked_batches(Path(path), "corpus", columns or {}, _check_corpus, skipped)


def read_pairs(path: str | Path) -> pl.DataFrame:
    """Every validated pair of a file at once (pair_batches, concatenated): for small files and tests."""
    return pl.concat(list(pair_batches(path)))


def read_corpus(path: str | Path) -> list[str]:
    return pl.concat(list(corpus_batches(path))).to_list()


# -- a retrieval layout: queries, corpus and qrels as BEIR and MTEB lay them out --------------------------
# queries: _id, text; corpus: _id, title (optional), text; qrels: query-id, corpus-id, score (optional, 1).
# Every qrel scoring above 0 is a pair (the query's text, the document's); a query with several is a query with
# several positives. A document's text is its title and text joined by a space, as BEIR's models encode it.

RETRIEVAL_COLUMNS = {"queries": (("_id", "text"), ()), "corpus": (("_id", "text"), ("title",)),
                     "qrels": (("query-id", "corpus-id"), ("score",))}
# The bundled splits' names for the same columns (data/sample/test: query_id, doc_id), taken where BEIR's are absent.
RETRIEVAL_ALIASES = {"queries": {"query_id": "_id"}, "corpus": {"doc_id": "_id"},
                     "qrels": {"query_id": "query-id", "doc_id": "corpus-id"}}


def _retrieval_table(path: Path, kind: str, out: Path) -> Path:
    """A BEIR file read in batches and checked (ids present, texts usable, scores numbers) into ``out`` as
    Parquet: ids as strings, the file's row numbers in ``row``."""
    required, optional = RETRIEVAL_COLUMNS[kind]
    problems, rows, writer = _Problems(path), 0, None
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
        raise _file_error(path, "no rows")
    problems.raise_if_any()
    return out


def _retrieval_rows(problems: _Problems, frame: pl.DataFrame, kind: str, first_row: int) -> pa.Table | None:
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
    _check_texts(problems, "text", frame.get_column("text"), first_row, required=True)
    if problems.count:
        return None
    text = _strings(frame.get_column("text"))
    if "title" in frame.columns:  # a blank title adds nothing
        title = pl.Series([t if isinstance(t, str) and not _BLANK.fullmatch(t) else None
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
        raise _file_error(qrels, "no qrel scores above 0: no pairs")
    pairs.sink_parquet(folder / "retrieval-pairs.parquet")
    tables["corpus"].select("text").sink_parquet(folder / "retrieval-corpus-texts.parquet")
    return folder / "retrieval-pairs.parquet", folder / "retrieval-corpus-texts.parquet"
