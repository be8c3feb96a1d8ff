"""The work directory's layout and the readers every later stage uses."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from gist_mining.errors import UsageError
from gist_mining.storage import read_json

TEXTS = "texts.parquet"
ANCHORS = "anchors.parquet"
EMBEDDINGS = "embeddings"
EMBED_PLAN = "embed_plan.json"
EMBED_MANIFEST = "embed_manifest.json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def done_marker(shard: Path) -> Path:
    # A leading underscore keeps pyarrow.dataset and Spark-style readers from taking markers for data.
    return shard.with_name(f"_{shard.stem}.done")


def embed_manifest(work: Path) -> dict:
    path = Path(work) / EMBED_MANIFEST
    if not path.exists():
        raise UsageError(f"{work}: no {EMBED_MANIFEST}; run `python -m pipeline.embed` to completion first")
    return read_json(path)


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One embedding shard's text ids and vectors as float32."""
    table = pq.read_table(path)
    flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return table.column("text_id").to_numpy(), flat.reshape(len(table), -1).astype(np.float32, copy=False)


def load_embeddings(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """All text ids and their guide embeddings (float32, rows L2-normalised), in shard order."""
    shards = [read_shard(Path(work) / s["file"]) for s in embed_manifest(work)["shards"]]
    return np.concatenate([i for i, _ in shards]), np.concatenate([v for _, v in shards])


class VectorStore:
    """Guide embeddings looked up by text_id, read from one float32 matrix on disk per lookup.

    Built once from the shards; a lookup maps the file only while it copies the asked rows, so memory
    holds what a chunk needs, not the whole corpus.
    """

    def __init__(self, work: Path):
        manifest = embed_manifest(work)
        folder = Path(work) / "vectors"
        self.path = folder / f"{manifest['fingerprint'][:16]}.npy"
        ids_path = folder / f"{manifest['fingerprint'][:16]}.ids.npy"
        if not self.path.exists():
            self._build(work, manifest, ids_path)
        ids = np.load(ids_path, allow_pickle=False)
        self.sorter = np.argsort(ids, kind="stable")
        self.sorted_ids = ids[self.sorter]

    def _build(self, work: Path, manifest: dict, ids_path: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        total = sum(s["rows"] for s in manifest["shards"])
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        matrix = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, manifest["dimension"]))
        ids, start = [], 0
        for shard in manifest["shards"]:
            shard_ids, vectors = read_shard(Path(work) / shard["file"])
            matrix[start : start + len(shard_ids)] = vectors
            ids.append(shard_ids)
            start += len(shard_ids)
        matrix.flush()
        del matrix
        write_npy_atomic(np.concatenate(ids), ids_path)
        os.replace(tmp, self.path)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.sorted_ids, ids)
        positions = np.minimum(positions, len(self.sorted_ids) - 1)
        if not np.array_equal(self.sorted_ids[positions], ids):
            raise UsageError("a text_id has no embedding: the work directory is incomplete or mixed")
        return self.sorter[positions]

    def get(self, ids: np.ndarray) -> np.ndarray:
        rows = self.rows(np.asarray(ids, dtype=np.int64))
        matrix = np.load(self.path, mmap_mode="r")
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), matrix.shape[1]), dtype=np.float32)
        out[order] = matrix[rows[order]]
        del matrix
        return out


def write_npy_atomic(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, path)


def scan_texts(work: Path) -> pl.LazyFrame:
    return pl.scan_parquet(Path(work) / TEXTS)


def scan_anchors(work: Path) -> pl.LazyFrame:
    return pl.scan_parquet(Path(work) / ANCHORS)
