"""Stage 1: embed every distinct text once with the guide model, into Parquet shards.

    python -m pipeline.embed --input data/sample/train.parquet --work runs/sample

Writes into the work directory: texts.parquet (text_id, text, is_query, is_document, n_chars),
anchors.parquet (anchor_id, source, source_row, query_id, positive_id, negative_ids, task),
embeddings/shard-*.parquet (text_id, embedding; with a query prompt unlike the document prompt, also
query_embedding: see gist_mining.embed.role_column) and embed_manifest.json once every shard is done.
Texts held by the embedding cache (--cache-dir, shared by work directories; --no-cache) are read from it,
not recomputed, and what is computed is added to it. Resumable (completed shards are kept), refuses a work
directory made from another model, setting or input, and splits across processes with
--num-shards/--shard-index.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gist_mining import cli, onnx_backend, workdir
from gist_mining.embed import EmbedSettings, embed_shard, plan_texts, shard_bounds, two_roles
from gist_mining.embed_cache import EmbeddingCache, default_root
from gist_mining.errors import InputError
from gist_mining.inputs import read_corpus, read_pairs
from gist_mining.models import DEFAULT_GUIDE, load_model, model_fingerprint, resolve_model, role_prompts
from gist_mining.storage import config_fingerprint, path_sha256, write_json_atomic, write_parquet_atomic


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--input", action="append", required=True, help="pairs file (repeatable)")
    parser.add_argument("--corpus", action="append", default=[], help="extra texts, column 'text' (repeatable)")
    parser.add_argument("--work", required=True, type=Path, help="work directory")
    parser.add_argument("--model", default=DEFAULT_GUIDE, help="guide model: bundled name, local directory or HF id")
    cli.model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", choices=onnx_backend.BACKENDS, default=EmbedSettings.backend,
                        help="forward pass: torch, onnx (ONNX Runtime on CPU), or auto: onnx when it serves the model on CPU")
    parser.add_argument("--token-budget", type=int, default=onnx_backend.TOKEN_BUDGET,
                        help="onnx: a batch's padded tokens (rows x longest text) stay within this, besides --batch-size")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="forward-pass dtype")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored embedding dtype")
    parser.add_argument("--max-seq-length", type=int, default=None)
    cli.prompt_arguments(parser)
    parser.add_argument("--shard-size", type=int, default=50_000, help="texts per embedding shard")
    parser.add_argument("--overwrite", action="store_true", help="discard a work directory made differently")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="embedding cache shared by work directories (default: $GIST_MINING_CACHE/embeddings, "
                             "else ~/.cache/gist-mining/embeddings)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor add to the embedding cache")
    cli.shard_arguments(parser)
    return parser.parse_args(argv)


def read_inputs(args) -> tuple[list, list, list[dict]]:
    pairs, corpora, problems, records = [], [], [], []
    for kind, paths, reader, out in (("pairs", args.input, read_pairs, pairs), ("corpus", args.corpus, read_corpus, corpora)):
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


def prepare_model(args):
    import torch

    model = load_model(args.model, device=args.device, max_seq_length=args.max_seq_length, revision=args.revision,
                       trust_remote_code=args.trust_remote_code)
    if args.precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision])
    return model


def make_plan(args, argv, model, prompts: dict[str, str], backend: str, texts, anchors, inputs: list[dict]) -> dict:
    settings = EmbedSettings(dtype=args.dtype, precision=args.precision, shard_size=args.shard_size,
                             query_prompt=prompts["query"], document_prompt=prompts["document"], backend=backend)
    model_info = dict(model_fingerprint(model, resolve_model(args.model, args.revision)), name=args.model)
    return plan_for(model_info, settings, inputs, shlex.join(["python", "-m", "pipeline.embed", *map(str, argv)]),
                    texts, anchors)


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


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    pairs, corpora, inputs = read_inputs(args)  # everything validated before anything is written
    texts, anchors, dropped = plan_texts(pairs, corpora, [str(p) for p in args.input])
    model = prepare_model(args)
    prompts = role_prompts(model, args)
    backend, encoder = onnx_backend.choose(args.backend, model, resolve_model(args.model, args.revision),
                                           list(prompts.values()), args.precision, args.token_budget)
    plan = make_plan(args, argv, model, prompts, backend, texts, anchors, inputs)
    work = args.work
    claim(work, plan, texts, anchors, args.overwrite)
    bounds = plan["bounds"]
    shards = workdir.Shards(work, workdir.EMBEDDINGS, len(bounds), plan["fingerprint"])
    mine = cli.my_shards(args, len(bounds), "embed")
    todo = shards.pending(mine)
    print(f"embed: {texts.height} distinct texts from {anchors.height} anchors ({dropped} given negatives dropped: "
          f"equal to the query or one of its positives, or repeated); {len(mine) - len(todo)} of this process's "
          f"shards already done", file=sys.stderr)
    if two_roles(plan["settings"]):
        print(f"embed: query prompt {plan['settings']['query_prompt']!r}, document prompt "
              f"{plan['settings']['document_prompt']!r}: every text in the document role, the queries in the query "
              "role too", file=sys.stderr)
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir or default_root(), plan["model"],
                                                      backend=plan["settings"]["backend"])
    embed_shards(shards, plan, texts, encoder, todo, args.batch_size, cache)


def embed_shards(shards: workdir.Shards, plan: dict, texts, model, todo: list[int], batch_size: int,
                 cache=None) -> dict | None:
    """Embed shards ``todo`` of the plan with ``model`` (or its OnnxEncoder; through ``cache``, an EmbeddingCache,
    if given); the manifest once every shard is done (None before)."""
    bounds, settings, started = plan["bounds"], EmbedSettings(**plan["settings"]), time.perf_counter()
    for i in tqdm(todo, unit="shard", desc="embed", disable=len(todo) < 2):
        start, stop = bounds[i]
        embed_shard(model, texts.slice(start, stop - start), shards.path(i), settings, batch_size, cache)
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


if __name__ == "__main__":
    cli.run(main)
