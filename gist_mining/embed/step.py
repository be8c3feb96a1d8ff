"""The embed stage's step: one shard of texts through the encoder (torch or ONNX, through the embedding cache) into
an embeddings/ shard. ``encoder_for`` is the stage's one door to the encoders."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining import onnx_backend, workdir
from gist_mining.embed.settings import EmbedSettings
from gist_mining.embed_cache import EmbeddingCache
from gist_mining.errors import UsageError
from gist_mining.models import ModelSettings, model_fingerprint, resolve_model
from gist_mining.storage import write_parquet_atomic
from gist_mining.workdir import QUERY_COLUMN, two_roles


def prepare_model(settings: ModelSettings, precision: str):
    import torch

    model = settings.load()
    if precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    return model


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


def encoder_for(model, settings: EmbedSettings, batch_size: int, cache=None):
    """The stage's one door to the encoders: a function from rows of texts (``text_id``, ``text``), a prompt and
    a task to their L2-normalised float32 vectors, in order. ``model``: the SentenceTransformer, or with the
    onnx backend its ``onnx_backend.OnnxEncoder``; with a cache (``embed_cache.EmbeddingCache``), only the
    texts it does not hold go through the model."""
    encode_with = onnx_backend.encode if settings.backend == "onnx" else encode

    def embedded(rows: pl.DataFrame, prompt: str, task: str | None) -> np.ndarray:
        strings = rows.get_column("text").to_list()
        compute = functools.partial(encode_with, model, batch_size=batch_size, prompt=prompt, task=task)
        return compute(strings) if cache is None else cache.vectors(
            rows.get_column("text_id").to_numpy(), strings, compute, prompt, task)

    return embedded


def embed_shard(embedded, texts: pl.DataFrame, path: Path, settings: EmbedSettings) -> None:
    """One shard's vectors from ``embedded`` (``encoder_for``): every text in the document role, and when the
    query prompt differs, the queries in the query role too."""
    both = two_roles(settings.as_dict())
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


@dataclass
class EmbedStep:
    """The embed stage's step (``gist_mining.executor.ShardStep``): shard i holds the texts ``plan.bounds[i]``
    of texts.parquet, embedded by the plan's guide. ``loaded``: the driver's own encoder, reused by a local
    executor; it is never pickled, so a remote worker loads the guide itself (``open``)."""

    shards: workdir.Shards
    plan: workdir.EmbedPlan
    model: ModelSettings
    batch_size: int
    token_budget: int = onnx_backend.TOKEN_BUDGET
    cache_dir: Path | None = None  # None: no embedding cache
    loaded: object = field(default=None, repr=False, compare=False)
    name: str = "embed"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "loaded": None}

    def open(self) -> EmbedWorker:
        settings = EmbedSettings(**self.plan.settings)
        encoder = self.loaded
        if encoder is None:  # a worker of another process or machine: the plan's guide, checked, never another
            model, model_dir = prepare_model(self.model, settings.precision), resolve_model(self.model.name,
                                                                                            self.model.revision)
            if model_fingerprint(model, model_dir)["fingerprint"] != self.plan.model["fingerprint"]:
                raise UsageError(f"{self.model.name}: this worker loads another model than the plan's "
                                 f"({model_dir}); give every worker the same files")
            _, encoder = onnx_backend.pick_backend(settings.backend, model, model_dir,
                                                   [settings.query_prompt, settings.document_prompt],
                                                   settings.precision, self.token_budget, self.model.name)
        cache = None if self.cache_dir is None else EmbeddingCache(self.cache_dir, self.plan.model,
                                                                   backend=settings.backend)
        workdir.checked_file(self.shards.work / workdir.TEXTS, self.plan.tables[workdir.TEXTS], self.plan.command)
        return EmbedWorker(encoder_for(encoder, settings, self.batch_size, cache), settings, cache)

    def run(self, worker: EmbedWorker, i: int) -> None:
        start, stop = self.plan.bounds[i]
        texts = pl.scan_parquet(self.shards.work / workdir.TEXTS).slice(start, stop - start).collect()
        embed_shard(worker.embedded, texts, self.shards.path(i), worker.settings)

    def close(self, worker: EmbedWorker) -> None:
        if worker.cache is not None:
            print(f"embed: cache {worker.cache.root}: {worker.cache.hits} vectors read, {worker.cache.misses} computed "
                  "and added", file=sys.stderr)


@dataclass
class EmbedWorker:
    embedded: object  # encoder_for's function
    settings: EmbedSettings
    cache: EmbeddingCache | None
