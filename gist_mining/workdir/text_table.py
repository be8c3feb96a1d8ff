"""Every text of a work directory by its position in text_id order, with its rows in the guide's vector matrices
(``TextTable``): fixed-width records and the texts' bytes end to end, read by position, so that a reader holds
what a batch uses, never the pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining.errors import UsageError
from gist_mining.storage import config_fingerprint, write_npy_atomic
from gist_mining.workdir.fixed_rows import FixedRows, built_checked
from gist_mining.workdir.layout import TEXT_BYTES, TEXT_TABLE, TEXT_TABLE_MARKER, TEXTS, rebuild_command
from gist_mining.workdir.readers import checked_embed_manifest, verified_table
from gist_mining.workdir.records import EmbedManifest
from gist_mining.workdir.vectors import VectorStore, two_roles

# NO_ROW: a text without a vector in that role (not a query, when the query prompt differs).
NO_ROW = -1
RECORD = np.dtype([("text_id", np.int64), ("start", np.int64), ("length", np.int64), ("document_row", np.int64),
                   ("query_row", np.int64)])
FORMAT = 2  # in the marker's fingerprint: a table of another layout is built again


class TextTable:
    """texts.parquet sorted by text_id as records (``vectors/texts.npy``: text_id, where its UTF-8 bytes start in
    ``vectors/texts-utf8.npy`` and how many, its rows in the document and query vector matrices). Built once per
    embedding fingerprint behind its marker, by whichever reader asks first (as the vector matrix is), and checked
    against its marker's record (bytes and SHA-256) at every open: one that does not match is refused with the
    command that rebuilds it. Read by position (``workdir.FixedRows``): a batch reads its texts' records and
    bytes; nothing is held."""

    def __init__(self, work: Path):
        work = Path(work)
        manifest = checked_embed_manifest(work)
        self.path, self.bytes_path, marker = work / TEXT_TABLE, work / TEXT_BYTES, work / TEXT_TABLE_MARKER
        fingerprint = config_fingerprint({"embed": manifest.fingerprint, "format": FORMAT})
        # The matrices first: each is built behind the work directory's lock, which the table's build holds.
        self.documents, self.queries = VectorStore(work, "document"), VectorStore(work, "query")
        built_checked(work, marker, fingerprint, lambda: self._build(work, manifest))
        self.fingerprint = fingerprint
        self.records, self.utf8 = FixedRows(self.path), FixedRows(self.bytes_path)

    def _build(self, work: Path, manifest: EmbedManifest) -> tuple[list[Path], dict]:
        """One sort of the pool, in memory: the one time the table is made."""
        frame = pl.read_parquet(verified_table(work, TEXTS), columns=["text_id", "text"])
        documents = self.documents.ids()
        frame = frame.join(pl.DataFrame({"text_id": documents, "document_row": np.arange(len(documents))}),
                           on="text_id", how="left")
        if two_roles(manifest.settings):
            queries = self.queries.ids()
            frame = frame.join(pl.DataFrame({"text_id": queries, "query_row": np.arange(len(queries))}),
                               on="text_id", how="left").with_columns(pl.col("query_row").fill_null(NO_ROW))
        else:
            frame = frame.with_columns(pl.col("document_row").alias("query_row"))
        if frame["document_row"].null_count():
            raise UsageError(f"{work / TEXTS}: {frame['document_row'].null_count()} texts have no stored vector; "
                             f"rebuild them with `{rebuild_command(work, 'search')}`")
        frame = frame.sort("text_id")
        records = np.empty(len(frame), RECORD)
        for name in ("text_id", "document_row", "query_row"):
            records[name] = frame[name].to_numpy()
        # The UTF-8 bytes as Arrow holds them, end to end: no Python string is made.
        text = frame["text"].to_arrow().cast(pa.large_string())
        offsets = (np.frombuffer(text.buffers()[1], np.int64)[text.offset: text.offset + len(text) + 1] if len(text)
                   else np.zeros(1, np.int64))
        records["start"], records["length"] = offsets[:-1] - offsets[0], np.diff(offsets)
        utf8 = np.frombuffer(text.buffers()[2] or b"", np.uint8)[offsets[0]: offsets[-1]]
        write_npy_atomic(utf8, self.bytes_path)
        write_npy_atomic(records, self.path)
        return [self.path, self.bytes_path], {}

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> np.ndarray:
        """Every text id in table order, read a chunk at a time (8 bytes a text: for the one-time builds that find
        texts by id; readers use the positions the row table stores)."""
        return self.records.columns("text_id")[0]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each of ``ids`` sits in the table; one line naming the table when one is not there."""
        table = self.ids()
        positions = np.searchsorted(table, ids).clip(max=max(len(self) - 1, 0))
        missing = ids[table[positions] != ids] if len(self) else ids
        if len(missing):
            raise UsageError(f"{self.path}: text id {missing[0]} of the mined tables has no text; the work directory "
                             "is incomplete or mixed")
        return positions

    def entries(self, positions: np.ndarray) -> np.ndarray:
        """The records of the texts at ``positions``: where their bytes are, their vector rows."""
        return self.records.read(positions)

    def texts_of(self, entries: np.ndarray) -> list[str]:
        return [text.decode() for text in self.utf8.spans(entries["start"], entries["length"])]

    def vectors_of(self, entries: np.ndarray, role: str) -> np.ndarray:
        """The stored guide vectors of the texts with ``entries`` in ``role`` ("query" or "document"), float32."""
        rows = entries[f"{role}_row"]
        if (rows == NO_ROW).any():
            raise UsageError(f"{self.path}: text id {entries['text_id'][rows == NO_ROW][0]} has no {role} vector")
        return (self.queries if role == "query" else self.documents).read(rows)

    def texts(self, positions: np.ndarray) -> list[str]:
        return self.texts_of(self.entries(positions))

    def vectors(self, positions: np.ndarray, role: str) -> np.ndarray:
        return self.vectors_of(self.entries(positions), role)
