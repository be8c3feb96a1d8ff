"""Completion markers: a step's shards (``Shards``: each done when its marker names the step's fingerprint and the
shard's rows, bytes and SHA-256), files built once behind a marker (``build_once``), and the check of a file
against its record (``problem``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq

from gist_mining.storage import file_sha256, write_json_atomic
from gist_mining.workdir.claims import locked
from gist_mining.workdir.layout import INDEX_MARKER, read_record, shard_name
from gist_mining.workdir.records import Sharded


def describe_file(path: Path) -> dict:
    return {"rows": pq.read_metadata(path).num_rows, "bytes": path.stat().st_size, "sha256": file_sha256(path)}

def problem(path: Path, record: dict | None, verify: bool = True) -> str | None:
    """What is wrong with ``path`` against its record (rows, bytes, sha256); None when it matches."""
    if record is None:
        return "no completion marker"
    if not path.is_file():
        return "missing"
    if path.stat().st_size != record["bytes"]:
        return f"truncated or changed ({path.stat().st_size} bytes, expected {record['bytes']})"
    if verify and file_sha256(path) != record["sha256"]:
        return "corrupt (SHA-256 differs from its completion marker)"
    return None

def built(work: Path, marker: Path, fingerprint: str, verify: bool = True) -> dict | None:
    """The record of files built once behind ``marker`` (``build_once``) when it names ``fingerprint`` and every
    file it lists matches it (its bytes, and with ``verify`` its SHA-256); None otherwise."""
    record = read_record(marker) or {}
    files = record.get("files")
    if record.get("fingerprint") != fingerprint or files is None:
        return None
    return None if any(problem(Path(work) / name, file, verify) for name, file in files.items()) else record

def build_once(work: Path, marker: Path, fingerprint: str, build, verify: bool = True) -> dict:
    """Files made once per ``fingerprint`` behind ``marker``, whichever process or resumed run asks first (the
    index, the earlier run's lists per shard, the vector matrix; a shared cache's folder:
    ``models.build_folder_once``).
    Fresh: the marker's record, read without the lock (a work directory this user cannot write is read as it
    is). Else, under the lock: the marker goes first, ``build()`` writes the files, each atomically, and returns
    them with what else the record holds; the marker, written last, lists each file's bytes (and SHA-256 with
    ``verify``: without it a resumed run compares sizes only, for files too large to hash at every start)."""
    record = built(work, marker, fingerprint, verify)
    if record is not None:
        return record
    with locked(work):
        record = built(work, marker, fingerprint, verify)  # another process may have built it meanwhile
        if record is None:
            marker.unlink(missing_ok=True)
            files, extra = build()
            record = {"fingerprint": fingerprint, **extra, "files": {
                str(f.relative_to(work)): {"bytes": f.stat().st_size, **({"sha256": file_sha256(f)} if verify else {})}
                for f in files}}
            write_json_atomic(record, marker)
    return record

def index_ready(work: Path, fingerprint: str) -> bool:
    """The index of ``work`` is there for the search plan ``fingerprint``: its marker names the plan, and the index
    and pool ids match the marker."""
    return built(Path(work), Path(work) / INDEX_MARKER, fingerprint) is not None

class Shards:
    """One step's sharded output: ``folder/shard-NNNNN.parquet``, each done when its marker says so."""

    def __init__(self, work: Path, folder: str, n_shards: int, fingerprint: str):
        self.work, self.folder, self.n, self.fingerprint = Path(work), folder, n_shards, fingerprint

    def path(self, i: int) -> Path:
        return self.work / self.folder / shard_name(i)

    def marker(self, i: int) -> Path:
        # A leading underscore keeps pyarrow.dataset and Spark-style readers from taking markers for data.
        return self.work / self.folder / f"_{shard_name(i).removesuffix('.parquet')}.done"

    def record(self, i: int) -> dict | None:
        """The marker's record when it is readable and names this step's fingerprint."""
        record = read_record(self.marker(i))
        return record if record is not None and record.get("fingerprint") == self.fingerprint else None

    def pending(self, indices: list[int], verify: bool = True) -> list[int]:
        """The shards among ``indices`` to (re)do: no valid marker, or a shard that does not match it."""
        todo = []
        for i in indices:
            marker = self.marker(i)
            wrong = problem(self.path(i), self.record(i), verify)
            if wrong is not None:
                if marker.exists() and read_record(marker) is None:
                    print(f"{marker}: unreadable (truncated?); rebuilding {self.path(i).name}", file=sys.stderr)
                elif marker.exists() or self.path(i).exists():
                    print(f"{self.path(i)}: {wrong}; rebuilding it", file=sys.stderr)
                self.marker(i).unlink(missing_ok=True)
                todo.append(i)
        return todo

    def mark_done(self, i: int) -> None:
        """Written after the shard itself: a shard without a marker is redone, never trusted."""
        write_json_atomic({"fingerprint": self.fingerprint, **describe_file(self.path(i))}, self.marker(i))

    def complete(self) -> bool:
        """Every shard done (markers and sizes; the bytes were verified when each was written or resumed)."""
        return all(problem(self.path(i), self.record(i), verify=False) is None for i in range(self.n))

    def finish(self, manifest: str, kind: type[Sharded], contents: dict) -> Sharded | None:
        """The step's manifest (a ``kind``: ``contents`` with the fingerprint and the shards' records), written
        once every shard is done; None while some are not."""
        if not self.complete():
            return None
        records = [self.record(i) for i in range(self.n)]
        shards = [{"file": f"{self.folder}/{shard_name(i)}", **{k: r[k] for k in ("rows", "bytes", "sha256")}}
                  for i, r in enumerate(records)]
        out = kind.from_json({**contents, "fingerprint": self.fingerprint, "shards": shards})
        write_json_atomic(out.to_json(), self.work / manifest)
        return out
