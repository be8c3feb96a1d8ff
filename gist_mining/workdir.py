"""The work directory's layout and the readers every later stage uses."""

from __future__ import annotations

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


def load_embeddings(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """All text ids and their guide embeddings (float32, rows L2-normalised), in shard order."""
    manifest = embed_manifest(work)
    ids, vectors = [], []
    for shard in manifest["shards"]:
        table = pq.read_table(Path(work) / shard["file"])
        ids.append(table.column("text_id").to_numpy())
        flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors.append(flat.reshape(len(table), manifest["dimension"]))
    return np.concatenate(ids), np.concatenate(vectors).astype(np.float32, copy=False)


def scan_texts(work: Path) -> pl.LazyFrame:
    return pl.scan_parquet(Path(work) / TEXTS)


def scan_anchors(work: Path) -> pl.LazyFrame:
    return pl.scan_parquet(Path(work) / ANCHORS)
