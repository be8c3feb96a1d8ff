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
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining import cli, medi, onnx_backend, planning, workdir
from gist_mining.embed_cache import EmbeddingCache, default_root
from gist_mining.errors import UsageError
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.inputs import HubSelection, parse_columns
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
from gist_mining.storage import commit, config_fingerprint, tmp_name, write_json_atomic, write_parquet_atomic
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
class InputOptions:
    """How the inputs are read: which columns are what, which part of a Hub dataset, a retrieval layout."""

    columns: str | None = option(None, "which columns are what, e.g. query=question,positive=answer,"
                                       "negative=hard_negative,task=source,text=body (default: recognised, as "
                                       "sentence-transformers names them)", type=str, metavar="ROLE=COLUMN,...")
    input_split: str = option(HubSelection.split, "split of Hub dataset inputs")
    input_subset: str | None = option(None, "subset (config) of Hub dataset inputs", type=str)
    input_revision: str | None = option(None, "branch, tag or commit of Hub dataset inputs", type=str)
    queries: Path | None = option(None, "BEIR queries (_id, text), with one --corpus and --qrels", type=Path)
    qrels: Path | None = option(None, "BEIR qrels (query-id, corpus-id, score): each qrel scoring above 0 is a pair",
                                type=Path)
    instructions: str = option(medi.MODES[0], "MEDI-style instructions (query_instruct columns, [instruction, text] "
                                              "pairs): dropped, as the GIST models were trained, or prepended to "
                                              "their texts", choices=medi.MODES)

    def hub(self) -> HubSelection:
        return HubSelection(split=self.input_split, subset=self.input_subset, revision=self.input_revision)


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
    parser.add_argument("--input", action="append", default=None,
                        help="pairs: a Parquet, JSONL or CSV file, a save_to_disk dataset, a folder or a glob of files, "
                             "a Hub dataset id or hf://datasets/OWNER/NAME/PATH (repeatable)")
    parser.add_argument("--corpus", action="append", default=[],
                        help="extra texts, column 'text', in any form --input takes (repeatable); with --qrels, the "
                             "BEIR corpus (_id, title, text)")
    add_options(parser.add_argument_group("input"), InputOptions)
    parser.add_argument("--work", required=True, type=Path, help="work directory")
    guide = parser.add_argument_group("guide")
    guide.add_argument("--guide", default=DEFAULT_GUIDE, help="bundled name, local directory or HF id")
    add_options(guide, ModelSettings)
    add_prompt_options(guide)
    add_options(parser, EmbedOptions)
    add_options(parser.add_argument_group("executor"), ExecutorSettings)
    return parser


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
              counts: dict, inputs: list[dict], command: str) -> dict:
    settings = EmbedSettings(dtype=options.dtype, precision=options.precision, shard_size=options.texts_per_shard,
                             query_prompt=prompts["query"], document_prompt=prompts["document"], backend=backend)
    model_info = dict(model_fingerprint(model, resolve_model(guide.name, guide.revision)), name=guide.name)
    return plan_for(model_info, settings, inputs, command, counts)


def plan_for(model_info: dict, settings: EmbedSettings, inputs: list[dict], command: str, counts: dict) -> dict:
    """The embed plan of a guide (``model_info``: its fingerprint and dimension) over planned texts and anchors
    (``counts``: planning.Planned's)."""
    plan = {"model": model_info, "settings": settings.as_dict(), "inputs": inputs, "command": command}
    plan["fingerprint"] = config_fingerprint(
        {"model": model_info["fingerprint"], "settings": plan["settings"],
         "inputs": [{k: v for k, v in i.items() if k != "path"} for i in inputs]})  # a file moved is the same input
    plan.update(
        dimension=model_info["dimension"], dtype=settings.dtype, bounds=shard_bounds(counts["texts"], settings.shard_size),
        counts={k: counts[k] for k in ("anchors", "texts", "queries", "documents")},
    )
    return plan


def write_tables(work: Path, plan: dict, planned: planning.Planned, resumed: bool) -> None:
    """texts.parquet and anchors.parquet moved in from planning, recorded in the plan; a resumed run replaces
    them only if damaged."""
    tables = (workdir.TEXTS, workdir.ANCHORS)
    recorded = plan.get("tables", {}) if resumed else {}
    for name in tables:
        if workdir.problem(work / name, recorded.get(name)) is not None:
            shutil.move(planned.path(name), tmp_name(work / name))  # a rename when planning ran on the same disk
            commit(tmp_name(work / name), work / name)
    plan["tables"] = {name: workdir.describe_file(work / name) for name in tables}
    write_json_atomic(plan, work / workdir.EMBED_PLAN)


def claim(work: Path, plan: dict, planned: planning.Planned, overwrite: bool) -> None:
    """Refuse a work directory holding another run; with --overwrite, remove it and everything made from it."""
    with workdir.locked(work):
        changed = workdir.changed_keys(work, "embed", plan, ("model", "settings", "inputs"))
        refusal = (f"{work} holds an embed run made with a different {' and '.join(changed) or 'configuration'}; "
                   "pass --overwrite to start over (it removes everything made from the old run), or use another --work")
        resumed = workdir.claim(work, "embed", plan, replace=overwrite, refusal=refusal)
        if resumed:
            plan.update(tables=workdir.read_plan(work, "embed").get("tables", {}))
        write_tables(work, plan, planned, resumed)
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


def embed(inputs: list[str], work: Path, guide: ModelSettings = ModelSettings(DEFAULT_GUIDE),
          options: EmbedOptions = EmbedOptions(), prompts: Prompts = Prompts(), *, corpus: list[str] = (),
          reading: InputOptions = InputOptions(), executor: ExecutorSettings = ExecutorSettings()) -> dict | None:
    """Embed every distinct text of the pairs ``inputs`` (files, folders, globs, Hub dataset ids; and the extra
    texts of ``corpus``; or a BEIR retrieval layout: ``reading.queries``/``qrels`` with one ``corpus``) once with
    the ``guide``, into ``work``: texts.parquet, anchors.parquet, embeddings/ and embed_manifest.json. Resumes an
    equal run; refuses a work directory made otherwise unless ``options.overwrite``. Returns the manifest, or
    None while shards are left for other processes (``executor``'s share)."""
    started = time.perf_counter()
    inputs, corpus, work = list(map(str, inputs)), list(map(str, corpus)), Path(work)
    if (reading.queries is None) != (reading.qrels is None) or (reading.qrels and len(corpus) != 1):
        raise UsageError("a retrieval layout takes --queries, --qrels and one --corpus together")
    if not inputs and not reading.qrels:
        raise UsageError("give pairs with --input, or a retrieval layout with --queries, --corpus and --qrels")
    retrieval = (Path(reading.queries), Path(corpus[0]), Path(reading.qrels)) if reading.qrels else None
    # Planned in a scratch folder ($TMPDIR), so that nothing is written into the work directory before every
    # input has been read and validated; claim moves the tables in.
    with tempfile.TemporaryDirectory(prefix="gist-mining-plan-") as scratch:
        planned, records = planning.read_inputs(inputs, [] if retrieval else corpus, Path(scratch),
                                                parse_columns(reading.columns), reading.hub(), retrieval,
                                                reading.instructions)
        model = prepare_model(guide, options.precision)
        resolved = role_prompts(model, prompts)
        backend, encoder = onnx_backend.pick_backend(options.backend, model, resolve_model(guide.name, guide.revision),
                                                     list(resolved.values()), options.precision, options.token_budget,
                                                     guide.name)
        command = cli.command("pipeline.embed", [*(a for p in inputs for a in ("--input", p)),
                                                 *(a for p in corpus for a in ("--corpus", p)), "--work", work,
                                                 *to_argv(reading), "--guide", guide.name, *to_argv(guide),
                                                 *to_argv(prompts), *to_argv(replace(options, overwrite=False))])
        plan = make_plan(guide, model, options, resolved, backend, planned.counts, records, command)
        claim(work, plan, planned, options.overwrite)
    shards = workdir.Shards(work, workdir.EMBEDDINGS, len(plan["bounds"]), plan["fingerprint"])
    print(f"embed: {plan['counts']['texts']} distinct texts from {plan['counts']['anchors']} anchors "
          f"({planned.dropped} given negatives dropped: equal to the query or one of its positives, or repeated)",
          file=sys.stderr)
    if two_roles(plan["settings"]):
        print(f"embed: query prompt {plan['settings']['query_prompt']!r}, document prompt "
              f"{plan['settings']['document_prompt']!r}: every text in the document role, the queries in the query "
              "role too", file=sys.stderr)
    step = EmbedStep(shards, plan, guide, options.encode_batch_size, options.token_budget,
                     None if options.no_cache else options.cache_dir or default_root(), loaded=encoder)
    run_step(step, executor)
    return finish(shards, plan, started)


def main(argv=None, prog: str = "python -m pipeline.embed") -> None:
    args = build_parser(prog).parse_args(argv)
    embed(args.input or [], args.work, from_args(ModelSettings, args, name=args.guide), from_args(EmbedOptions, args),
          from_args(Prompts, args), corpus=args.corpus, reading=from_args(InputOptions, args),
          executor=from_args(ExecutorSettings, args))


if __name__ == "__main__":
    cli.run(main)
