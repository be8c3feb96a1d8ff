"""--skip-bad-rows: the input rows left out because they fail a check (gist_mining.inputs), one row each in a
Parquet table (``source``, ``row``, ``reason``; the work directory's skipped_rows.parquet), written as the inputs
are read, so that memory holds a batch's bad rows, not the file's."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from gist_mining.errors import InputError
from gist_mining.storage import AtomicParquetWriter

SCHEMA = pa.schema([("source", pa.large_string()), ("row", pa.int64()), ("reason", pa.large_string())])


class SkippedRows:
    """A table of skipped rows, open while the inputs are read: ``add`` a batch's problems, then close (it appears
    under its name, whole, only then). ``counts``: rows skipped per source, in reading order."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.counts: Counter[str] = Counter()
        self._writer = AtomicParquetWriter(self.path, SCHEMA)

    def add(self, source: Path, problems: list[tuple[int, str]]) -> None:
        """``problems``: (row, what is wrong); a row with several problems is one row, its reasons joined."""
        reasons: dict[int, list[str]] = {}
        for row, what in sorted(problems, key=lambda problem: problem[0]):  # the checks add them column by column
            reasons.setdefault(row, []).append(what)
        self._writer.write(pa.table({"source": [str(source)] * len(reasons), "row": list(reasons),
                                     "reason": ["; ".join(r) for r in reasons.values()]}, schema=SCHEMA))
        self.counts[str(source)] += len(reasons)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def close(self, keep: bool) -> None:
        """The table under its name (``keep``), or nothing left behind (the inputs had other problems)."""
        self._writer.__exit__(None if keep else InputError, None, None)
