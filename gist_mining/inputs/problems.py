"""One line per problem, naming the file and the row (``Problems``), and the file-level errors."""

from __future__ import annotations

from pathlib import Path


from gist_mining.errors import InputError


MAX_PROBLEMS = 20


class Problems:
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


def describe_error(err: Exception) -> str:
    """An exception's type and first line: libraries' messages run on with hints and tracebacks."""
    return f"{type(err).__name__}: {next(iter(str(err).splitlines()), '')}"


def file_error(path: Path, what: str) -> InputError:
    return InputError([_one_line(f"{path}: {what}")])
