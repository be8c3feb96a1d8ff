"""Stage 1: embed every distinct text once with the guide model, into Parquet shards.

    python -m pipeline.embed --input data/sample/train.parquet --work runs/sample

Writes into the work directory: texts.parquet (text_id, text, is_query, is_document, n_chars),
anchors.parquet (anchor_id, source, source_row, query_id, positive_id, negative_ids, task),
embeddings/shard-*.parquet (text_id, embedding; with a query prompt unlike the document prompt, also
query_embedding: see gist_mining.workdir.role_column) and embed_manifest.json once every shard is done.
Texts held by the embedding cache (--cache-dir, shared by work directories; --no-cache) are read from it,
not recomputed, and what is computed is added to it. Resumable (completed shards are kept), refuses a work
directory made from another model, setting or input, and splits across processes with
--num-shards/--shard-index.

Read top to bottom: the settings and command line, planning the texts (one row per distinct text, the
anchors as text ids), the plan and claim on the work directory, then the shards. How a vector is computed
stays outside this file (gist_mining/models.py, onnx_backend.py, embed_cache.py): the shards reach it through
one function, ``encoder_for``: rows of texts, a prompt and a task in, L2-normalised float32 vectors out, in
order (torch's ``encode`` below or ``onnx_backend.encode``, as ``onnx_backend.choose`` picked, optionally
through ``EmbeddingCache.vectors``).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from tqdm import tqdm

from gist_mining import cli, onnx_backend, planning, workdir
from gist_mining.embed_cache import EmbeddingCache, default_root
from gist_mining.errors import UsageError
from gist_mining.inputs import HubSelection, parse_columns
from gist_mining.models import DEFAULT_GUIDE, load_model, model_fingerprint, resolve_model, role_prompts
from gist_mining.storage import commit, config_fingerprint, tmp_name, write_json_atomic, write_parquet_atomic
from gist_mining.workdir import QUERY_COLUMN, two_roles


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


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--input", action="append", default=[],
                        help="pairs: a Parquet, JSONL or CSV file, a save_to_disk dataset, a folder or a glob of files, "
                             "a Hub dataset id or hf://datasets/OWNER/NAME/PATH (repeatable)")
    parser.add_argument("--corpus", action="append", default=[],
                        help="extra texts, column 'text', in any form --input takes (repeatable); with --qrels, the "
                             "BEIR corpus (_id, title, text)")
    parser.add_argument("--queries", type=Path, default=None, help="BEIR queries (_id, text), with --corpus and --qrels")
    parser.add_argument("--qrels", type=Path, default=None,
                        help="BEIR qrels (query-id, corpus-id, score): each qrel scoring above 0 is a pair")
    parser.add_argument("--input-split", default=HubSelection.split, help="split of Hub dataset inputs")
    parser.add_argument("--input-subset", default=None, help="subset (config) of Hub dataset inputs")
    parser.add_argument("--input-revision", default=None, help="branch, tag or commit of Hub dataset inputs")
    parser.add_argument("--columns", default=None, metavar="ROLE=COLUMN,...",
                        help="which columns are what, e.g. query=question,positive=answer,negative=hard_negative,"
                             "task=source,text=body (default: recognised, as sentence-transformers names them)")
    parser.add_argument("--work", required=True, type=Path, help="work directory")
    parser.add_argument("--model", default=DEFAULT_GUIDE, help="guide model: bundled name, local directory or HF id")
    cli.model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", choices=onnx_backend.BACKENDS, default=EmbedSettings.backend,
                        help="forward pass: torch, onnx (ONNX Runtime on CPU), or auto: onnx when it serves the model on CPU")
    parser.add_argument("--token-budget", type=int, default=onnx_backend.TOKEN_BUDGET,
                        help="onnx: a batch's padded tokens (rows x longest text) stay within this, besides --batch-size")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=EmbedSettings.precision,
                        help="forward-pass dtype")
    parser.add_argument("--dtype", choices=["float32", "float16"], default=EmbedSettings.dtype,
                        help="stored embedding dtype")
    parser.add_argument("--max-seq-length", type=int, default=None)
    cli.prompt_arguments(parser)
    parser.add_argument("--shard-size", type=int, default=EmbedSettings.shard_size, help="texts per embedding shard")
    parser.add_argument("--overwrite", action="store_true", help="discard a work directory made differently")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache shared by work directories (default: $GIST_MINING_CACHE/embeddings, "
                             "else ~/.cache/gist-mining/embeddings)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor add to the embedding cache")
    cli.shard_arguments(parser)
    args = parser.parse_args(argv)
    if (args.queries is None) != (args.qrels is None) or (args.qrels and len(args.corpus) != 1):
        raise UsageError("a retrieval layout takes --queries, --qrels and one --corpus together")
    if not args.input and not args.qrels:
        raise UsageError("give pairs with --input, or a retrieval layout with --queries, --corpus and --qrels")
    return args


def shard_bounds(n_texts: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, n_texts)) for start in range(0, n_texts, shard_size)]


# -- the plan: guide, settings and inputs; claiming the work directory -------------------------------


def prepare_model(args):
    import torch

    model = load_model(args.model, device=args.device, max_seq_length=args.max_seq_length, revision=args.revision,
                       trust_remote_code=args.trust_remote_code)
    if args.precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision])
    return model


def make_plan(args, argv, model, prompts: dict[str, str], backend: str, counts: dict, inputs: list[dict]) -> dict:
    settings = EmbedSettings(dtype=args.dtype, precision=args.precision, shard_size=args.shard_size,
                             query_prompt=prompts["query"], document_prompt=prompts["document"], backend=backend)
    model_info = dict(model_fingerprint(model, resolve_model(args.model, args.revision)), name=args.model)
    return plan_for(model_info, settings, inputs, cli.command("pipeline.embed", argv), counts)


def plan_for(model_info: dict, settings: EmbedSettings, inputs: list[dict], command: str, counts: dict) -> dict:
    """The embed plan of a guide (``model_info``: its fingerprint and dimension) over planned texts and anchors
    (``counts``: planning.Planned's)."""
    plan = {"model": model_info, "settings": settings.as_dict(), "inputs": inputs, "command": command}
    plan["fingerprint"] = config_fingerprint(
        {"model": model_info["fingerprint"], "settings": plan["settings"], "inputs": [i["sha256"] for i in inputs]})
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


def embed_shards(shards: workdir.Shards, plan: dict, model, todo: list[int], batch_size: int,
                 cache=None) -> dict | None:
    """Embed shards ``todo`` of the plan with ``model`` (or its OnnxEncoder; through ``cache``, an EmbeddingCache,
    if given); the manifest once every shard is done (None before)."""
    bounds, settings, started = plan["bounds"], EmbedSettings(**plan["settings"]), time.perf_counter()
    embedded = encoder_for(model, settings, batch_size, cache)
    for i in tqdm(todo, unit="shard", desc="embed", disable=len(todo) < 2):
        start, stop = bounds[i]
        texts = pl.scan_parquet(shards.work / workdir.TEXTS).slice(start, stop - start).collect()  # its row groups only
        embed_shard(embedded, texts, shards.path(i), settings)
        shards.mark_done(i)
    if cache is not None and todo:
        print(f"embed: cache {cache.root}: {cache.hits} vectors read, {cache.misses} computed and added", file=sys.stderr)
    manifest = shards.finish(workdir.EMBED_MANIFEST, {k: v for k, v in plan.items() if k != "bounds"})
    if manifest is None:
        print("embed: shards left for other processes or a rerun", file=sys.stderr)
    else:
        print(f"embed: complete in {time.perf_counter() - started:.1f}s -> {shards.work / workdir.EMBED_MANIFEST}",
              file=sys.stderr)
    return manifest


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work
    # Planned in a scratch folder ($TMPDIR), so that nothing is written into the work directory before every
    # input has been read and validated; claim moves the tables in.
    with tempfile.TemporaryDirectory(prefix="gist-mining-plan-") as scratch:
        hub = HubSelection(split=args.input_split, subset=args.input_subset, revision=args.input_revision)
        retrieval = (args.queries, Path(args.corpus[0]), args.qrels) if args.qrels else None
        planned, inputs = planning.read_inputs(args.input, args.corpus if not retrieval else [], Path(scratch),
                                               parse_columns(args.columns), hub, retrieval)
        model = prepare_model(args)
        prompts = role_prompts(model, args)
        backend, encoder = onnx_backend.choose(args.backend, model, resolve_model(args.model, args.revision),
                                               list(prompts.values()), args.precision, args.token_budget, args.model)
        plan = make_plan(args, argv, model, prompts, backend, planned.counts, inputs)
        claim(work, plan, planned, args.overwrite)
    bounds = plan["bounds"]
    shards = workdir.Shards(work, workdir.EMBEDDINGS, len(bounds), plan["fingerprint"])
    assigned = cli.my_shards(args, len(bounds), "embed")
    todo = shards.pending(assigned)
    print(f"embed: {plan['counts']['texts']} distinct texts from {plan['counts']['anchors']} anchors ({planned.dropped} given negatives dropped: "
          f"equal to the query or one of its positives, or repeated); {len(assigned) - len(todo)} of this process's "
          f"shards already done", file=sys.stderr)
    if two_roles(plan["settings"]):
        print(f"embed: query prompt {plan['settings']['query_prompt']!r}, document prompt "
              f"{plan['settings']['document_prompt']!r}: every text in the document role, the queries in the query "
              "role too", file=sys.stderr)
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir or default_root(), plan["model"],
                                                      backend=plan["settings"]["backend"])
    embed_shards(shards, plan, encoder, todo, args.batch_size, cache)


if __name__ == "__main__":
    cli.run(main)
