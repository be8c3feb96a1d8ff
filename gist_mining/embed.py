"""The embed stage as pure steps: plan the distinct texts and anchors, then embed one shard at a time."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining import onnx_backend
from gist_mining.errors import InputError
from gist_mining.ids import text_ids
from gist_mining.storage import write_parquet_atomic


@dataclass(frozen=True)
class EmbedSettings:
    """Everything besides the model and the inputs that changes what the embed stage writes."""

    dtype: str = "float32"
    precision: str = "fp32"
    shard_size: int = 50_000
    query_prompt: str = ""
    document_prompt: str = ""
    # auto: onnx on CPU when onnxruntime is installed and the model exports (gist_mining.onnx_backend), else torch.
    # The plan stores the backend used: the two agree within 1e-4 but not bit for bit (about 1e-7).
    backend: str = "auto"

    def as_dict(self) -> dict:
        return asdict(self)


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


def clean_given_negatives(anchors: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Given negatives minus the anchor's own query and every positive of that query, each kept once, in order.

    A text given as a negative of a query that another row gives as its positive is a contradiction in the
    input; kept, it would train the model away from a labelled positive. Returns the anchors and how many
    given negatives were dropped.
    """
    positives = anchors.group_by("query").agg(pl.col("positive").alias("positives_of_query"))
    given = anchors.select("anchor_id", "query", "negatives").explode("negatives").drop_nulls("negatives")
    kept = (
        given.join(positives, on="query", how="left", maintain_order="left")
        .filter((pl.col("negatives") != pl.col("query")) & ~pl.col("positives_of_query").list.contains(pl.col("negatives")))
        .unique(subset=["anchor_id", "negatives"], keep="first", maintain_order=True)
        .group_by("anchor_id", maintain_order=True)
        .agg("negatives")
    )
    cleaned = anchors.drop("negatives").join(kept, on="anchor_id", how="left", maintain_order="left").with_columns(
        pl.col("negatives").fill_null(pl.lit([], dtype=pl.List(pl.String))))
    return cleaned.select(anchors.columns), given.height - int(cleaned["negatives"].list.len().sum())


def plan_texts(pairs: list[pl.DataFrame], corpora: list[list[str]], sources: list[str]) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """Deduplicate every text across inputs and give it a content id.

    Returns the text table (``text_id``, ``text``, ``is_query``, ``is_document``, ``n_chars``) sorted by
    length so that shards hold texts of similar length, the anchors table (one row per input row) and the
    number of given negatives dropped by ``clean_given_negatives``.
    """
    anchors, dropped = clean_given_negatives(pl.concat(
        [
            frame.with_columns(
                pl.lit(source).alias("source"), pl.int_range(1, frame.height + 1, dtype=pl.Int64).alias("source_row")
            )
            for frame, source in zip(pairs, sources)
        ]
    ).with_row_index("anchor_id"))
    queries = anchors.get_column("query")
    documents = pl.concat(
        [anchors.get_column("positive"), anchors.get_column("negatives").explode().drop_nulls()]
        + [pl.Series("text", corpus, dtype=pl.String) for corpus in corpora]
    )
    texts = (
        pl.concat(
            [
                pl.DataFrame({"text": queries, "is_query": True, "is_document": False}),
                pl.DataFrame({"text": documents, "is_query": False, "is_document": True}),
            ]
        )
        .group_by("text")
        .agg(pl.col("is_query").any(), pl.col("is_document").any())
    )
    ids = text_ids(texts.get_column("text").to_list())
    if len(np.unique(ids)) != len(ids):
        raise InputError(["two distinct texts share a 64-bit text_id; please report this input"])
    texts = (
        texts.with_columns(pl.Series("text_id", ids), pl.col("text").str.len_chars().alias("n_chars"))
        .select("text_id", "text", "is_query", "is_document", "n_chars")
        .sort("n_chars", "text_id")
    )

    def to_id(expr: pl.Expr) -> pl.Expr:
        return expr.replace_strict(texts.get_column("text"), texts.get_column("text_id"), return_dtype=pl.Int64)

    anchors = anchors.select(
        pl.col("anchor_id").cast(pl.Int64),
        "source",
        "source_row",
        to_id(pl.col("query")).alias("query_id"),
        to_id(pl.col("positive")).alias("positive_id"),
        pl.col("negatives").list.eval(to_id(pl.element())).alias("negative_ids"),
        "task",
    )
    return texts, anchors, dropped


def shard_bounds(n_texts: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, n_texts)) for start in range(0, n_texts, shard_size)]


def encode(model, texts: list[str], batch_size: int, prompt: str, task: str | None = None) -> np.ndarray:
    """One encode call per shard: it sorts the shard by length itself, and its progress bar counts batches.
    ``task`` is what encode_query / encode_document pass (it routes a model with a Router module)."""
    if not texts:
        return np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=True, prompt=prompt, **({"task": task} if task else {}))


def vector_column(vectors: np.ndarray, dtype: str, valid: np.ndarray | None = None) -> pa.Array:
    """A fixed_size_list column of the vectors; rows where ``valid`` is False are null."""
    arrow_type = pa.float16() if dtype == "float16" else pa.float32()
    vectors = vectors.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
    values = pa.array(vectors.reshape(-1), type=arrow_type)
    return pa.FixedSizeListArray.from_arrays(values, vectors.shape[1], mask=None if valid is None else pa.array(~valid))


def embed_shard(model, texts: pl.DataFrame, path: Path, settings: EmbedSettings, batch_size: int, cache=None) -> None:
    """With a cache (``embed_cache.EmbeddingCache``), only the texts it does not hold go through the model.
    ``model``: the SentenceTransformer, or with the onnx backend its ``onnx_backend.OnnxEncoder``."""
    both = two_roles(settings.as_dict())

    def embedded(rows: pl.DataFrame, prompt: str, task: str | None) -> np.ndarray:
        strings = rows.get_column("text").to_list()
        compute = functools.partial(onnx_backend.encode if settings.backend == "onnx" else encode, model,
                                    batch_size=batch_size, prompt=prompt, task=task)
        return compute(strings) if cache is None else cache.vectors(
            rows.get_column("text_id").to_numpy(), strings, compute, prompt, task)

    vectors = embedded(texts, settings.document_prompt, "document" if both else None)
    table = pa.table({"text_id": pa.array(texts.get_column("text_id").to_numpy(), type=pa.int64()),
                      "embedding": vector_column(vectors, settings.dtype)})
    if both:
        is_query = texts.get_column("is_query").to_numpy()
        queries = np.zeros_like(vectors)
        queries[is_query] = embedded(texts.filter("is_query"), settings.query_prompt, "query")
        table = table.append_column(QUERY_COLUMN, vector_column(queries, settings.dtype, is_query))
    # Float vectors and unique hashes do not compress: zstd and dictionaries would only cost time.
    write_parquet_atomic(table, path, compression="none", use_dictionary=False)
