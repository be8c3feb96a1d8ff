"""Stage 1: embed every distinct text once with the guide model, into Parquet shards.

    python -m pipeline.embed --input data/sample/train.parquet --work runs/sample

Writes into the work directory: texts.parquet (text_id, text, is_query, is_document, n_chars),
anchors.parquet (anchor_id, source, source_row, query_id, positive_id, negative_ids, task),
embeddings/shard-*.parquet (text_id, embedding) and embed_manifest.json once every shard is done.
Resumable (completed shards are kept), refuses a work directory made from another model, setting or
input, and splits across processes with --num-shards/--shard-index.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from gist_mining import cli
from gist_mining.embed import EmbedSettings, embed_shard, plan_texts, shard_bounds
from gist_mining.errors import InputError, UsageError
from gist_mining.inputs import read_corpus, read_pairs
from gist_mining.models import DEFAULT_GUIDE, load_model, model_fingerprint, resolve_model
from gist_mining.storage import config_fingerprint, file_sha256, path_sha256, read_json, write_json_atomic, write_parquet_atomic
from gist_mining.workdir import ANCHORS, EMBED_MANIFEST, EMBED_PLAN, EMBEDDINGS, TEXTS, done_marker, shard_name


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--input", action="append", required=True, help="pairs file (repeatable)")
    parser.add_argument("--corpus", action="append", default=[], help="extra texts, column 'text' (repeatable)")
    parser.add_argument("--work", required=True, type=Path, help="work directory")
    parser.add_argument("--model", default=DEFAULT_GUIDE, help="guide model: bundled name or local directory")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="forward-pass dtype")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32", help="stored embedding dtype")
    parser.add_argument("--max-seq-length", type=int, default=None)
    parser.add_argument("--prompt", default=None, help="text prepended to every input (models trained with one)")
    parser.add_argument("--shard-size", type=int, default=50_000, help="texts per embedding shard")
    parser.add_argument("--overwrite", action="store_true", help="discard a work directory made differently")
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

    model = load_model(args.model, device=args.device, max_seq_length=args.max_seq_length)
    if args.precision != "fp32":
        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision])
    return model


def claim_work_dir(work: Path, plan: dict, overwrite: bool) -> None:
    """Refuse a work directory holding another run; with --overwrite, clear it first."""
    plan_path = work / EMBED_PLAN
    if plan_path.exists():
        old = read_json(plan_path)
        if old["fingerprint"] == plan["fingerprint"]:
            return
        if not overwrite:
            changed = [k for k in ("model", "settings", "inputs") if old.get(k) != plan.get(k)]
            raise UsageError(
                f"{work} holds an embed run made with a different {' and '.join(changed) or 'configuration'} "
                f"(fingerprint {old['fingerprint'][:12]} != {plan['fingerprint'][:12]}); "
                "pass --overwrite to start over, or use another --work"
            )
        for name in (EMBED_PLAN, EMBED_MANIFEST, TEXTS, ANCHORS):
            (work / name).unlink(missing_ok=True)
        shutil.rmtree(work / EMBEDDINGS, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    pairs, corpora, inputs = read_inputs(args)  # everything validated before anything is written
    texts, anchors = plan_texts(pairs, corpora, [str(p) for p in args.input])
    my = cli.my_shards(len(shard_bounds(texts.height, args.shard_size)), args.num_shards, args.shard_index)
    settings = EmbedSettings(dtype=args.dtype, precision=args.precision, shard_size=args.shard_size, prompt=args.prompt)
    model = prepare_model(args)
    model_info = model_fingerprint(model, resolve_model(args.model), prompt=args.prompt)
    model_info["name"] = args.model
    plan = {"model": model_info, "settings": settings.as_dict(), "inputs": inputs}
    plan["fingerprint"] = config_fingerprint(
        {"model": model_info["fingerprint"], "settings": plan["settings"], "inputs": [i["sha256"] for i in inputs]}
    )
    work = args.work
    claim_work_dir(work, plan, args.overwrite)
    bounds = shard_bounds(texts.height, args.shard_size)
    plan.update(
        dimension=model_info["dimension"],
        dtype=args.dtype,
        counts={"anchors": anchors.height, "texts": texts.height, "queries": int(texts["is_query"].sum()),
                "documents": int(texts["is_document"].sum())},
        shards=[{"file": f"{EMBEDDINGS}/{shard_name(i)}", "rows": b - a} for i, (a, b) in enumerate(bounds)],
    )
    if not (work / TEXTS).exists():
        write_parquet_atomic(texts.to_arrow(), work / TEXTS)
        write_parquet_atomic(anchors.to_arrow(), work / ANCHORS)
    write_json_atomic(plan, work / EMBED_PLAN)

    todo = [i for i in my if not _shard_done(work, i, plan["fingerprint"])]
    print(f"embed: {texts.height} distinct texts from {anchors.height} anchors, {len(bounds)} shard(s); "
          f"this process: {len(my)} shard(s), {len(my) - len(todo)} already done", file=sys.stderr)
    started = time.perf_counter()
    for i in tqdm(todo, unit="shard", desc="embed", disable=len(todo) < 2):
        start, stop = bounds[i]
        shard = work / EMBEDDINGS / shard_name(i)
        embed_shard(model, texts.slice(start, stop - start), shard, settings, args.batch_size)
        # The marker is written last: a shard without one is redone, never trusted.
        write_json_atomic({"fingerprint": plan["fingerprint"], "rows": stop - start, "sha256": file_sha256(shard)},
                          done_marker(shard))
    finish_if_complete(work, plan, time.perf_counter() - started)


def _shard_done(work: Path, index: int, fingerprint: str) -> bool:
    marker = done_marker(work / EMBEDDINGS / shard_name(index))
    return marker.exists() and read_json(marker)["fingerprint"] == fingerprint


def finish_if_complete(work: Path, plan: dict, seconds: float) -> None:
    """Whichever process finds every shard done writes the manifest later stages read."""
    markers = [done_marker(work / s["file"]) for s in plan["shards"]]
    if not all(m.exists() and read_json(m)["fingerprint"] == plan["fingerprint"] for m in markers):
        missing = sum(not m.exists() for m in markers)
        print(f"embed: {missing} shard(s) still to do by other processes or a rerun", file=sys.stderr)
        return
    manifest = dict(plan)
    manifest["shards"] = [dict(s, sha256=read_json(m)["sha256"]) for s, m in zip(plan["shards"], markers)]
    write_json_atomic(manifest, work / EMBED_MANIFEST)
    print(f"embed: complete in {seconds:.1f}s -> {work / EMBED_MANIFEST}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
