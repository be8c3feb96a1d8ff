"""The guide's vectors as one matrix on disk per role (``VectorStore``), looked up by text id, and the embedding
shards' columns."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from gist_mining.errors import UsageError
from gist_mining.storage import commit, tmp_name, write_npy_atomic
from gist_mining.workdir.fixed_rows import FixedRows
from gist_mining.workdir.layout import VECTORS
from gist_mining.workdir.markers import build_once
from gist_mining.workdir.readers import checked_embed_manifest, verified
from gist_mining.workdir.records import EmbedManifest

# The embedding shards' vector columns: see role_column.
QUERY_COLUMN = "query_embedding"


def two_roles(settings: dict) -> bool:
    """Whether the embed settings' query prompt differs from the document prompt (each role then has vectors)."""
    return settings.get("query_prompt", "") != settings.get("document_prompt", "")


def role_column(settings: dict, role: str) -> str:
    """The embedding shards' column holding a role's vectors. ``embedding`` holds every text in the document
    role (the only role when the two prompts are equal: each text embedded once); when the query prompt
    differs, ``query_embedding`` holds the queries in the query role (null for texts that are not queries).
    Every text has a document-role vector, so that ``pipeline.mask --include-queries`` can search queries as
    documents."""
    return QUERY_COLUMN if role == "query" and two_roles(settings) else "embedding"


def read_shard(path: Path, column: str = "embedding", dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """One embedding shard's text ids and vectors in ``column`` (as ``dtype``), less its null rows."""
    return shard_arrays(pl.read_parquet(path, columns=["text_id", column]), column, dtype)


def shard_arrays(frame: pl.DataFrame, column: str = "embedding", dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """An embedding table's text ids and vectors in ``column`` (less its null rows) as arrays, the vectors as
    ``dtype``. Read with Polars: its Parquet reader decodes a fixed-size list column 3.6x faster than pyarrow's
    (40k x 768 floats: 0.49 s vs 1.76 s) and hands the vectors over as one matrix."""
    frame = frame.filter(pl.col(column).is_not_null())
    vectors = frame[column].to_numpy()
    return frame["text_id"].to_numpy(), vectors.astype(dtype, copy=False)


def load_embeddings(work: Path, role: str = "document") -> tuple[np.ndarray, np.ndarray]:
    """All text ids and their guide embeddings in ``role`` (float32, rows L2-normalised), in shard order: every
    text in the document role, the queries in the query role."""
    manifest = checked_embed_manifest(work)
    column = role_column(manifest.settings, role)
    shards = [read_shard(p, column) for p in verified(work, manifest, "embed")]
    return np.concatenate([i for i, _ in shards]), np.concatenate([v for _, v in shards])


class VectorStore:
    """Guide embeddings in one role ("query" or "document") looked up by text_id, from one matrix on disk
    built once from the shards; when the two roles' prompts are equal, both roles read the same matrix.

    The matrix keeps the shards' dtype (float16 with ``pipeline.embed --dtype float16``: half the disk and
    page cache); lookups return float32. Lookups read just the asked rows from the file, so memory holds what
    a chunk needs, never the pool. The id index (24 bytes a text) is loaded at the first lookup by id: a reader
    that knows the matrix rows (``read``) never holds it.
    """

    def __init__(self, work: Path, role: str = "document"):
        manifest = checked_embed_manifest(work)
        self.column = role_column(manifest.settings, role)
        prefix = "" if self.column == "embedding" else "query_"
        folder = Path(work) / VECTORS
        self.path, self.ids_path = folder / f"{prefix}matrix.npy", folder / f"{prefix}ids.npy"
        marker = folder / f"_{prefix}matrix.done"
        # Sizes only: hashing an 8 GB matrix at every start would cost more than the search of a shard.
        build_once(work, marker, manifest.fingerprint, lambda: self._build(work, manifest, self.ids_path),
                   verify=False)
        self.matrix = FixedRows(self.path)
        self.dtype, self.dimension = self.matrix.dtype, self.matrix.shape[1]

    def _build(self, work: Path, manifest: EmbedManifest, ids_path: Path) -> tuple[list[Path], dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        total = (manifest.counts["queries"] if self.column == QUERY_COLUMN
                 else sum(s["rows"] for s in manifest.shards))
        tmp, dtype = tmp_name(self.path), np.dtype(manifest.dtype)
        ids = []
        # Written through the file, not a memory map: a map's written pages would count in RSS until it closes.
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (total, manifest.dimension)})
            for path in verified(work, manifest, "embed"):
                shard_ids, vectors = read_shard(path, self.column, dtype)
                fh.write(np.ascontiguousarray(vectors).data)
                ids.append(shard_ids)
        write_npy_atomic(np.concatenate(ids), ids_path)
        commit(tmp, self.path)
        return [self.path, ids_path], {}

    @cached_property
    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        """The row order that sorts the ids, and the sorted ids: read once, at the first lookup by id."""
        ids = self.ids()
        sorter = np.argsort(ids, kind="stable")
        return sorter, ids[sorter]

    def ids(self) -> np.ndarray:
        """The text id of each matrix row, read from disk."""
        return np.load(self.ids_path, allow_pickle=False)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        sorter, sorted_ids = self._index
        positions = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        if not np.array_equal(sorted_ids[positions], ids):
            raise UsageError("a text_id has no embedding: the work directory is incomplete or mixed")
        return sorter[positions]

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return self.read(self.rows(ids.reshape(-1))).reshape(*ids.shape, self.dimension)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The matrix rows ``rows`` (any order, repeats allowed) as float32, read from the file (``FixedRows``)."""
        return self.matrix.read(rows).astype(np.float32)

    def view(self, ids: np.ndarray) -> "StoredRows":
        return StoredRows(self, ids)


class StoredRows:
    """The vectors of ``ids`` (in that order), indexed like an (n, d) array but read from the store on demand:
    ``rows[5:10]``, ``rows[index_positions]`` (any shape) give float32 copies of just those rows."""

    def __init__(self, store: VectorStore, ids: np.ndarray):
        self.store, self.ids = store, ids
        self.shape = (len(ids), store.dimension)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, positions) -> np.ndarray:
        return self.store.get(self.ids[positions])
