"""Stage 1: embed every distinct text once with the guide model, into Parquet shards.

    python -m pipeline.embed --input data/sample/train.parquet --work runs/sample

Writes into the work directory: texts.parquet (text_id, text, is_query, is_document, n_chars),
anchors.parquet (anchor_id, source, source_row, query_id, positive_id, negative_ids, task),
embeddings/shard-*.parquet (text_id, embedding; with a query prompt unlike the document prompt, also
query_embedding: see gist_mining.workdir.role_column) and embed_manifest.json once every shard is done.
Texts held by the embedding cache (--cache-dir, shared by work directories; --no-cache) are read from it,
not recomputed, and what is computed is added to it. Resumable (completed shards are kept), refuses a work
directory made from another model, setting or input, and runs its shards through an executor
(gist_mining.executor: this process's share of --num-shards/--shard-index, or Ray tasks with --executor ray).
From Python: ``embed(inputs, work, guide, options, prompts)``.

Read top to bottom: the settings and command line, planning the texts (one row per distinct text, the
anchors as text ids), the plan and claim on the work directory, the shards' step, then ``embed``. How a vector is computed
stays outside this file (gist_mining/models.py, onnx_backend.py, embed_cache.py): the shards reach it through
one function, ``encoder_for``: rows of texts, a prompt and a task in, L2-normalised float32 vectors out, in
order (torch's ``encode`` below or ``onnx_backend.encode``, as ``onnx_backend.pick_backend`` picked, optionally
through ``EmbeddingCache.vectors``).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining import cli, onnx_backend, workdir
from gist_mining.embed_cache import EmbeddingCache, default_root
from gist_mining.errors import InputError, UsageError
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.inputs import read_corpus, read_pairs
from gist_mining.models import (
    DEFAULT_GUIDE,
    ModelSettings,
    Prompts,
    add_prompt_options,
    model_fingerprint,
    resolve_model,
    role_prompts,
)
from gist_mining.settings import HelpFormatter, add_options, from_args, option, to_argv
from gist_mining.storage import config_fingerprint, path_sha256, write_json_atomic, write_parquet_atomic
from gist_mining.workdir import QUERY_COLUMN, two_roles


@dataclass(frozen=True)
class EmbedOptions:
    """How the embed stage runs besides its inputs, guide and prompts. What changes the vectors goes into the
    plan (``EmbedSettings``); the rest changes only how fast they come."""

    precision: str = option("fp32", "forward-pass dtype", choices=("fp32", "fp16", "bf16"))
    dtype: str = option("float32", "stored embedding dtype", choices=("float32", "float16"))
    texts_per_shard: int = option(50_000, "texts per embedding shard")
    # auto: onnx on CPU when onnxruntime is installed and the model exports (gist_mining.onnx_backend), else torch.
    # The plan stores the backend used: the two agree within 1e-4 but not bit for bit (about 1e-7).
    backend: str = option("auto", "forward pass: torch, onnx (ONNX Runtime on CPU), or auto: onnx when it serves "
                                  "the model on CPU", choices=onnx_backend.BACKENDS)
    encode_batch_size: int = option(64, "texts per forward pass")
    token_budget: int = option(onnx_backend.TOKEN_BUDGET, "onnx: a batch's padded tokens (rows x longest text) stay "
                                                          "within this, besides --encode-batch-size")
    cache_dir: Path | None = option(None, "embedding cache shared by work directories (default: "
                                          "$GIST_MINING_CACHE/embeddings, else ~/.cache/gist-mining/embeddings)",
                                    type=Path)
    no_cache: bool = option(False, "neither read nor add to the embedding cache")
    overwrite: bool = option(False, "discard a work directory made differently (and everything made from it)")


@dataclass(frozen=True)
class EmbedSettings:
    """Everything besides the model and the inputs that changes what the embed stage writes: its plan's
    ``settings`` (the prompts and backend as resolved for the guide)."""

    dtype: str
    precision: str
    shard_size: int  # texts per shard (--texts-per-shard)
    query_prompt: str
    document_prompt: str
    backend: str

    def as_dict(self) -> dict:
        return asdict(self)


def build_parser(prog: str = "python -m pipeline.embed") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--input", action="append", required=True, help="pairs file (repeatable)")
    parser.add_argument("--corpus", action="append", default=[], help="extra texts, column 'text' (repeatable)")
    parser.add_argument("--work", required=True, type=Path, help="work directory")
    guide = parser.add_argument_group("guide")
    guide.add_argument("--guide", default=DEFAULT_GUIDE, help="bundled name, local directory or HF id")
    add_options(guide, ModelSettings)
    add_prompt_options(guide)
    add_options(parser, EmbedOptions)
    add_options(parser.add_argument_group("executor"), ExecutorSettings)
    return parser


def read_inputs(inputs: list[Path], corpus: list[Path]) -> tuple[list, list, list[dict]]:
    pairs, corpora, problems, records = [], [], [], []
    for kind, paths, reader, out in (("pairs", inputs, read_pairs, pairs), ("corpus", corpus, read_corpus, corpora)):
        for path in paths:
            try:
                out.append(reader(path))
            except InputError as err:
                problems += err.problems
                continue
            records.append({"kind": kind, "path": str(path), "sha256": path_sha256(Path(path))})
    if problems:
        raise InputError(problems)
    return pairs, corpora, records


# -- plan: every distinct text once, with a content id; the anchors as ids ------------------------------


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
    ids = workdir.text_ids(texts.get_column("text").to_list())
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


# -- the plan: guide, settings and inputs; claiming the work directory -------------------------------


def prepare_model(settings: ModelSettings, precision: str):
    import torch

    model = settings.load()
    if precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[precision])
    return model


def make_plan(guide: ModelSettings, model, options: EmbedOptions, prompts: dict[str, str], backend: str,
              texts, anchors, inputs: list[dict], command: str) -> dict:
    settings = EmbedSettings(dtype=options.dtype, precision=options.precision, shard_size=options.texts_per_shard,
                             query_prompt=prompts["query"], document_prompt=prompts["document"], backend=backend)
    model_info = dict(model_fingerprint(model, resolve_model(guide.name, guide.revision)), name=guide.name)
    return plan_for(model_info, settings, inputs, command, texts, anchors)


def plan_for(model_info: dict, settings: EmbedSettings, inputs: list[dict], command: str, texts, anchors) -> dict:
    """The embed plan of a guide (``model_info``: its fingerprint and dimension) over planned texts and anchors."""
    plan = {"model": model_info, "settings": settings.as_dict(), "inputs": inputs, "command": command}
    plan["fingerprint"] = config_fingerprint(
        {"model": model_info["fingerprint"], "settings": plan["settings"], "inputs": [i["sha256"] for i in inputs]})
    plan.update(
        dimension=model_info["dimension"], dtype=settings.dtype, bounds=shard_bounds(texts.height, settings.shard_size),
        counts={"anchors": anchors.height, "texts": texts.height, "queries": int(texts["is_query"].sum()),
                "documents": int(texts["is_document"].sum())},
    )
    return plan


def write_tables(work: Path, plan: dict, texts, anchors, resumed: bool) -> None:
    """texts.parquet and anchors.parquet, recorded in the plan; a resumed run rewrites them only if damaged."""
    tables = {workdir.TEXTS: texts, workdir.ANCHORS: anchors}
    recorded = plan.get("tables", {}) if resumed else {}
    for name, frame in tables.items():
        if workdir.problem(work / name, recorded.get(name)) is not None:
            write_parquet_atomic(frame.to_arrow(), work / name)
    plan["tables"] = {name: workdir.describe_file(work / name) for name in tables}
    write_json_atomic(plan, work / workdir.EMBED_PLAN)


def claim(work: Path, plan: dict, texts, anchors, overwrite: bool) -> None:
    """Refuse a work directory holding another run; with --overwrite, remove it and everything made from it."""
    with workdir.locked(work):
        changed = workdir.changed_keys(work, "embed", plan, ("model", "settings", "inputs"))
        refusal = (f"{work} holds an embed run made with a different {' and '.join(changed) or 'configuration'}; "
                   "pass --overwrite to start over (it removes everything made from the old run), or use another --work")
        resumed = workdir.claim(work, "embed", plan, replace=overwrite, refusal=refusal)
        if resumed:
            plan.update(tables=workdir.read_plan(work, "embed").get("tables", {}))
        write_tables(work, plan, texts, anchors, resumed)
        workdir.remove_temps(work)


# -- embed: one shard at a time, through the encoder (torch or ONNX) and the cache ------------------------


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
    """The embed stage's step (``gist_mining.executor.ShardStep``): shard i holds the texts ``plan["bounds"][i]``
    of texts.parquet, embedded by the plan's guide. ``loaded``: the driver's own encoder, reused by a local
    executor; it is never pickled, so a remote worker loads the guide itself (``open``)."""

    shards: workdir.Shards
    plan: dict
    model: ModelSettings
    batch_size: int
    token_budget: int = onnx_backend.TOKEN_BUDGET
    cache_dir: Path | None = None  # None: no embedding cache
    loaded: object = field(default=None, repr=False, compare=False)
    name: str = "embed"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "loaded": None}

    def open(self) -> EmbedWorker:
        settings = EmbedSettings(**self.plan["settings"])
        encoder = self.loaded
        if encoder is None:  # a worker of another process or machine: the plan's guide, checked, never another
            model, model_dir = prepare_model(self.model, settings.precision), resolve_model(self.model.name,
                                                                                            self.model.revision)
            if model_fingerprint(model, model_dir)["fingerprint"] != self.plan["model"]["fingerprint"]:
                raise UsageError(f"{self.model.name}: this worker loads another model than the plan's "
                                 f"({model_dir}); give every worker the same files")
            _, encoder = onnx_backend.pick_backend(settings.backend, model, model_dir,
                                                   [settings.query_prompt, settings.document_prompt],
                                                   settings.precision, self.token_budget, self.model.name)
        cache = None if self.cache_dir is None else EmbeddingCache(self.cache_dir, self.plan["model"],
                                                                   backend=settings.backend)
        wrong = workdir.problem(self.shards.work / workdir.TEXTS, self.plan["tables"][workdir.TEXTS])
        if wrong is not None:
            raise UsageError(f"{self.shards.work / workdir.TEXTS}: {wrong}; rerun `{self.plan['command']}`")
        return EmbedWorker(encoder_for(encoder, settings, self.batch_size, cache), settings, cache)

    def run(self, worker: EmbedWorker, i: int) -> None:
        start, stop = self.plan["bounds"][i]
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


def finish(shards: workdir.Shards, plan: dict, started: float) -> dict | None:
    """The manifest once every shard is done (None before)."""
    manifest = shards.finish(workdir.EMBED_MANIFEST, {k: v for k, v in plan.items() if k != "bounds"})
    if manifest is None:
        print("embed: shards left for other processes or a rerun", file=sys.stderr)
    else:
        print(f"embed: complete in {time.perf_counter() - started:.1f}s -> {shards.work / workdir.EMBED_MANIFEST}",
              file=sys.stderr)
    return manifest


def embed(inputs: list[Path], work: Path, guide: ModelSettings = ModelSettings(DEFAULT_GUIDE),
          options: EmbedOptions = EmbedOptions(), prompts: Prompts = Prompts(), *, corpus: list[Path] = (),
          executor: ExecutorSettings = ExecutorSettings()) -> dict | None:
    """Embed every distinct text of the pairs files ``inputs`` (and the extra texts of ``corpus``) once with the
    ``guide``, into ``work``: texts.parquet, anchors.parquet, embeddings/ and embed_manifest.json. Resumes an
    equal run; refuses a work directory made otherwise unless ``options.overwrite``. Returns the manifest, or
    None while shards are left for other processes (``executor``'s share)."""
    started = time.perf_counter()
    inputs, corpus, work = list(map(Path, inputs)), list(map(Path, corpus)), Path(work)
    pairs, corpora, records = read_inputs(inputs, corpus)  # everything validated before anything is written
    texts, anchors, dropped = plan_texts(pairs, corpora, [str(p) for p in inputs])
    model = prepare_model(guide, options.precision)
    resolved = role_prompts(model, prompts)
    backend, encoder = onnx_backend.pick_backend(options.backend, model, resolve_model(guide.name, guide.revision),
                                                 list(resolved.values()), options.precision, options.token_budget,
                                                 guide.name)
    command = cli.command("pipeline.embed", [*(a for p in inputs for a in ("--input", p)),
                                             *(a for p in corpus for a in ("--corpus", p)), "--work", work,
                                             "--guide", guide.name, *to_argv(guide), *to_argv(prompts),
                                             *to_argv(replace(options, overwrite=False))])
    plan = make_plan(guide, model, options, resolved, backend, texts, anchors, records, command)
    claim(work, plan, texts, anchors, options.overwrite)
    shards = workdir.Shards(work, workdir.EMBEDDINGS, len(plan["bounds"]), plan["fingerprint"])
    print(f"embed: {texts.height} distinct texts from {anchors.height} anchors ({dropped} given negatives dropped: "
          "equal to the query or one of its positives, or repeated)", file=sys.stderr)
    if two_roles(plan["settings"]):
        print(f"embed: query prompt {plan['settings']['query_prompt']!r}, document prompt "
              f"{plan['settings']['document_prompt']!r}: every text in the document role, the queries in the query "
              "role too", file=sys.stderr)
    del texts, anchors, pairs  # the shards read texts.parquet
    step = EmbedStep(shards, plan, guide, options.encode_batch_size, options.token_budget,
                     None if options.no_cache else options.cache_dir or default_root(), loaded=encoder)
    run_step(step, executor)
    return finish(shards, plan, started)


def main(argv=None, prog: str = "python -m pipeline.embed") -> None:
    args = build_parser(prog).parse_args(argv)
    embed(args.input, args.work, from_args(ModelSettings, args, name=args.guide), from_args(EmbedOptions, args),
          from_args(Prompts, args), corpus=args.corpus, executor=from_args(ExecutorSettings, args))


if __name__ == "__main__":
    cli.run(main)
