"""Every text of a work directory in one Arrow IPC file sorted by text_id, with its rows in the guide's vector
matrices (``TextTable``): memory-mapped, so that a reader finds a batch's texts and vectors by a binary search and
a take, and holds what the batch uses, never the pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining.errors import UsageError
from gist_mining.storage import config_fingerprint
from gist_mining.workdir.layout import TEXT_TABLE, TEXT_TABLE_MARKER, TEXTS, rebuild_command
from gist_mining.workdir.mapped import mapped_once, write_one_batch
from gist_mining.workdir.readers import checked_embed_manifest, verified_table
from gist_mining.workdir.records import EmbedManifest
from gist_mining.workdir.vectors import VectorStore, two_roles

# NO_ROW: a text without a vector in that role (not a query, when the query prompt differs).
NO_ROW = -1
SCHEMA = pa.schema([("text_id", pa.int64()), ("text", pa.large_string()), ("document_row", pa.int64()),
                    ("query_row", pa.int64())])
FORMAT = 1  # in the marker's fingerprint: a table of another layout is built again


class TextTable:
    """texts.parquet sorted by text_id as an uncompressed Arrow IPC file (``vectors/texts.arrow``), memory-mapped,
    with each text's row in the document and query vector matrices (``VectorStore.read``). Built once per
    embedding fingerprint behind its marker, by whichever reader asks first (as the vector matrix is), and checked
    against its marker's record (bytes and SHA-256) at every open: one that does not match is refused with the
    command that rebuilds it. Nothing of it is copied into memory: the ids are searched in place, and a take
    copies just the asked texts."""

    def __init__(self, work: Path):
        work = Path(work)
        manifest = checked_embed_manifest(work)
        self.path, marker = work / TEXT_TABLE, work / TEXT_TABLE_MARKER
        fingerprint = config_fingerprint({"embed": manifest.fingerprint, "format": FORMAT})
        # The matrices first: each is built behind the work directory's lock, which the table's build holds.
        self.documents, self.queries = VectorStore(work, "document"), VectorStore(work, "query")
        self.mapped = mapped_once(work, self.path, marker, fingerprint, lambda: self._build(work, manifest), SCHEMA)
        batch = self.mapped.batch
        self.ids = batch.column("text_id").to_numpy()  # views of the map, not copies
        self.text = batch.column("text")
        self.row = {"document": batch.column("document_row").to_numpy(),
                    "query": batch.column("query_row").to_numpy()}

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
        return write_one_batch(self.path, frame.sort("text_id").to_arrow().cast(SCHEMA).combine_chunks())

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Where each of ``ids`` sits in the table; one line naming the table when one is not there."""
        positions = np.searchsorted(self.ids, ids).clip(max=max(len(self.ids) - 1, 0))
        missing = ids[self.ids[positions] != ids] if len(self.ids) else ids
        if len(missing):
            raise UsageError(f"{self.path}: text id {missing[0]} of the mined tables has no text; the work directory "
                             "is incomplete or mixed")
        return positions

    def texts(self, positions: np.ndarray) -> list[str]:
        return self.text.take(pa.array(positions, pa.int64())).to_pylist()

    def vectors(self, positions: np.ndarray, role: str) -> np.ndarray:
        """The stored guide vectors of the texts at ``positions`` in ``role`` ("query" or "document"), float32."""
        rows = self.row[role][positions]
        if (rows == NO_ROW).any():
            raise UsageError(f"{self.path}: text id {self.ids[positions[rows == NO_ROW][0]]} has no {role} vector")
        return (self.queries if role == "query" else self.documents).read(rows)
