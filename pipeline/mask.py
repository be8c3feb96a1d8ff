"""Stage 2: FAISS search, positive-aware hard negatives and false-negative masks, all with guide scores.

    python -m pipeline.mask --work runs/sample
    python -m pipeline.mask --work runs/sample --refilter --margin-strategy absolute --margin 0.1

Reads the embed stage's work directory and writes:
  index/            the FAISS index over the candidate pool and its pool ids
  candidates/       per anchor: k nearest candidate text_ids with exact guide scores, positive score and
                    given negatives with scores; everything a later rule needs without a new search
  mined/            per anchor: hard negatives, false negatives, flags on given negatives, all with scores
  mined_summary.json
--refilter recomputes mined/ from candidates/ under new rules, without embeddings or search.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from gist_mining import cli
from gist_mining.errors import UsageError
from gist_mining.index import KINDS, build_index, load_index, resolve_kind, save_index
from gist_mining.margins import STRATEGIES
from gist_mining.mining import PAD_ID, MiningRules, padded, ragged, search_candidates, select
from gist_mining.storage import AtomicParquetWriter, config_fingerprint, read_json, write_json_atomic
from gist_mining.summary import summarize
from gist_mining.workdir import (ANCHORS, TEXTS, VectorStore, done_marker, embed_manifest, shard_name,
                                 write_npy_atomic)

CHUNK = 1024  # anchors searched and selected at a time: bounds memory whatever the number of anchors
CANDIDATES, MINED, INDEX = "candidates", "mined", "index"
MASK_PLAN, MINED_MANIFEST, SUMMARY = "mask_plan.json", "mined_manifest.json", "mined_summary.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.mask", description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--k", type=int, default=100, help="candidates kept per anchor")
    parser.add_argument("--index", choices=KINDS, default="auto")
    parser.add_argument("--include-queries", action="store_true",
                        help="other anchors' queries are candidates too (symmetric tasks, e.g. paraphrases)")
    parser.add_argument("--margin-strategy", choices=STRATEGIES, default="relative")
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--min-score", type=float, default=None, help="drop candidates below this (too easy)")
    parser.add_argument("--max-score", type=float, default=None, help="flag candidates above this as false negatives")
    parser.add_argument("--rank-min", type=int, default=0, help="skip this many top surviving candidates")
    parser.add_argument("--num-negatives", type=int, default=3)
    parser.add_argument("--sampling", choices=["top", "random"], default="top")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=100_000, help="anchors per output shard")
    parser.add_argument("--refilter", action="store_true", help="recompute mined/ from candidates/ with new rules")
    parser.add_argument("--overwrite", action="store_true", help="discard candidates made from other inputs")
    cli.shard_arguments(parser)
    return parser.parse_args(argv)


def rules_from(args) -> MiningRules:
    return MiningRules(margin_strategy=args.margin_strategy, margin=args.margin, min_score=args.min_score,
                       max_score=args.max_score, rank_min=args.rank_min, num_negatives=args.num_negatives,
                       sampling=args.sampling, seed=args.seed)


def load_anchors(work: Path) -> pl.DataFrame:
    """Anchors with the ids their search must skip: the query itself and every positive of that query."""
    anchors = pl.read_parquet(work / ANCHORS)
    positives = anchors.group_by("query_id").agg(pl.col("positive_id").unique().alias("exclude_ids"))
    return anchors.join(positives, on="query_id", how="left").sort("anchor_id").with_columns(
        pl.concat_list(pl.col("query_id"), "exclude_ids").alias("exclude_ids")
    )


def candidate_pool(work: Path, include_queries: bool) -> np.ndarray:
    texts = pl.scan_parquet(work / TEXTS)
    keep = pl.col("is_document") | pl.col("is_query") if include_queries else pl.col("is_document")
    return texts.filter(keep).select("text_id").collect().get_column("text_id").to_numpy()


def prepare_index(work: Path, store: VectorStore, plan: dict):
    """Build the index once per candidates plan; later processes and resumed runs load it."""
    folder = work / INDEX
    index_path, ids_path, marker = folder / "index.faiss", folder / "pool_ids.npy", folder / "_index.done"
    if marker.exists() and read_json(marker)["fingerprint"] == plan["fingerprint"]:
        return load_index(index_path, plan["k"]), np.load(ids_path, allow_pickle=False)
    pool_ids = candidate_pool(work, plan["include_queries"])
    started = time.perf_counter()
    index = build_index(store.get(pool_ids), plan["index"], plan["k"])
    folder.mkdir(parents=True, exist_ok=True)
    save_index(index, index_path)
    write_npy_atomic(pool_ids, ids_path)
    write_json_atomic({"fingerprint": plan["fingerprint"], "kind": plan["index"], "vectors": len(pool_ids),
                       "seconds": round(time.perf_counter() - started, 2)}, marker)
    return index, pool_ids


CANDIDATE_SCHEMA = pa.schema([
    ("anchor_id", pa.int64()), ("query_id", pa.int64()), ("positive_id", pa.int64()), ("task", pa.string()),
    ("positive_score", pa.float32()), ("candidate_ids", pa.list_(pa.int64())),
    ("candidate_scores", pa.list_(pa.float32())), ("given_negative_ids", pa.list_(pa.int64())),
    ("given_negative_scores", pa.list_(pa.float32())),
])


MINED_SCHEMA = pa.schema([
    ("anchor_id", pa.int64()), ("query_id", pa.int64()), ("positive_id", pa.int64()), ("task", pa.string()),
    ("positive_score", pa.float32()), ("threshold", pa.float32()), ("negative_ids", pa.list_(pa.int64())),
    ("negative_scores", pa.list_(pa.float32())), ("negative_ranks", pa.list_(pa.int32())),
    ("false_negative_ids", pa.list_(pa.int64())), ("false_negative_scores", pa.list_(pa.float32())),
    ("given_negative_flagged", pa.list_(pa.bool_())), ("given_negative_ids", pa.list_(pa.int64())),
    ("n_candidates", pa.int32()),
])


def search_chunk(anchors: pl.DataFrame, store: VectorStore, index, pool_ids, pool_vectors, k: int) -> pa.Table:
    queries = store.get(anchors["query_id"].to_numpy())
    positive_scores = np.einsum("nd,nd->n", queries, store.get(anchors["positive_id"].to_numpy()))
    given = padded(anchors["negative_ids"].to_arrow(), PAD_ID, np.int64)
    given_vectors = store.get(given[given != PAD_ID]) if given.size else np.zeros((0, queries.shape[1]), np.float32)
    given_scores = np.full(given.shape, -np.inf, dtype=np.float32)
    given_scores[given != PAD_ID] = np.einsum("nd,nd->n", np.repeat(queries, (given != PAD_ID).sum(1), axis=0),
                                             given_vectors)
    exclude = padded(anchors["exclude_ids"].to_arrow(), PAD_ID, np.int64)
    ids, scores = search_candidates(index, queries, exclude, pool_ids, pool_vectors, k)
    return pa.table({
        "anchor_id": anchors["anchor_id"].to_arrow(), "query_id": anchors["query_id"].to_arrow(),
        "positive_id": anchors["positive_id"].to_arrow(), "task": anchors["task"].to_arrow(),
        "positive_score": pa.array(positive_scores, type=pa.float32()),
        "candidate_ids": ragged(ids, ids != PAD_ID, pa.int64()),
        "candidate_scores": ragged(scores, ids != PAD_ID, pa.float32()),
        "given_negative_ids": anchors["negative_ids"].to_arrow(),
        "given_negative_scores": ragged(given_scores, given != PAD_ID, pa.float32()),
    }, schema=CANDIDATE_SCHEMA)


def mine_chunk(candidates: pa.Table, rules: MiningRules) -> pa.Table:
    given = padded(candidates["given_negative_ids"], PAD_ID, np.int64)
    chosen = select(
        anchor_ids=candidates["anchor_id"].to_numpy(),
        positive_scores=candidates["positive_score"].to_numpy(),
        candidate_ids=padded(candidates["candidate_ids"], PAD_ID, np.int64),
        candidate_scores=padded(candidates["candidate_scores"], -np.inf, np.float32),
        given_ids=given,
        given_scores=padded(candidates["given_negative_scores"], -np.inf, np.float32),
        rules=rules,
    )
    columns = {name: candidates[name] for name in ("anchor_id", "query_id", "positive_id", "task", "positive_score")}
    columns.update(chosen)
    columns["given_negative_ids"] = candidates["given_negative_ids"]
    columns["n_candidates"] = pc.list_value_length(candidates["candidate_ids"]).cast(pa.int32())
    return pa.table(columns)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = args.work
    embed = embed_manifest(work)
    rules = rules_from(args)
    n_pool = embed["counts"]["documents"] + (embed["counts"]["queries"] if args.include_queries else 0)
    plan = {"embed_fingerprint": embed["fingerprint"], "k": args.k, "index": resolve_kind(args.index, n_pool),
            "include_queries": args.include_queries, "shard_size": args.shard_size}
    plan["fingerprint"] = config_fingerprint(plan)
    rules_fingerprint = config_fingerprint({"candidates": plan["fingerprint"], "rules": rules.as_dict()})
    claim(work, plan, rules_fingerprint, args)

    n_anchors = embed["counts"]["anchors"]
    n_shards = -(-n_anchors // args.shard_size)
    mine = cli.my_shards(n_shards, args.num_shards, args.shard_index)
    search = [s for s in mine if not is_done(work / CANDIDATES / shard_name(s), plan["fingerprint"])]
    started = time.perf_counter()
    if search:
        store = VectorStore(work)
        index, pool_ids = prepare_index(work, store, plan)
        # Only an approximate index needs the pool's vectors again, to score its finds exactly.
        pool_vectors = None if plan["index"] == "flat" else store.get(pool_ids)
        anchors = load_anchors(work)
        with tqdm(total=sum(min(args.shard_size, n_anchors - s * args.shard_size) for s in search), unit="anchor",
                  desc="search") as progress:
            for s in search:
                path = work / CANDIDATES / shard_name(s)
                part = anchors.slice(s * args.shard_size, args.shard_size)
                with AtomicParquetWriter(path, CANDIDATE_SCHEMA) as out:
                    for start in range(0, part.height, CHUNK):
                        chunk = part.slice(start, CHUNK)
                        out.write(search_chunk(chunk, store, index, pool_ids, pool_vectors, args.k))
                        progress.update(chunk.height)
                write_json_atomic({"fingerprint": plan["fingerprint"]}, done_marker(path))
    searched = time.perf_counter() - started
    for s in mine:
        path = work / MINED / shard_name(s)
        if is_done(path, rules_fingerprint):
            continue
        source = pq.ParquetFile(work / CANDIDATES / shard_name(s))
        with AtomicParquetWriter(path, MINED_SCHEMA) as out:
            for batch in source.iter_batches(batch_size=CHUNK):
                out.write(mine_chunk(pa.Table.from_batches([batch]), rules))
        write_json_atomic({"fingerprint": rules_fingerprint}, done_marker(path))
    finish_if_complete(work, plan, rules, rules_fingerprint, n_shards,
                       {"search_seconds": round(searched, 2), "total_seconds": round(time.perf_counter() - started, 2)})


def is_done(shard: Path, fingerprint: str) -> bool:
    marker = done_marker(shard)
    return marker.exists() and read_json(marker)["fingerprint"] == fingerprint


def claim(work: Path, plan: dict, rules_fingerprint: str, args) -> None:
    """Candidates from other embeddings or search settings, or mined/ under other rules, are never reused silently."""
    plan_path = work / MASK_PLAN
    if plan_path.exists():
        old = read_json(plan_path)
        if old["fingerprint"] != plan["fingerprint"]:
            if not args.overwrite:
                changed = [k for k in ("embed_fingerprint", "k", "index", "include_queries", "shard_size")
                           if old.get(k) != plan.get(k)]
                raise UsageError(f"{work}: candidates/ were made with other {', '.join(changed)}; "
                                 "pass --overwrite to search again")
            for name in (CANDIDATES, MINED, INDEX):
                shutil.rmtree(work / name, ignore_errors=True)
            for name in (MINED_MANIFEST, SUMMARY):
                (work / name).unlink(missing_ok=True)
        elif old.get("rules_fingerprint") not in (None, rules_fingerprint) and not (args.refilter or args.overwrite):
            raise UsageError(f"{work}: mined/ holds other rules ({json.dumps(old.get('rules'))}); "
                             "pass --refilter to recompute it from candidates/ under the new rules")
    elif args.refilter:
        raise UsageError(f"{work}: no candidates/ to refilter; run `python -m pipeline.mask` first")
    write_json_atomic(dict(plan, rules_fingerprint=rules_fingerprint, rules=rules_from(args).as_dict()), plan_path)


def finish_if_complete(work: Path, plan: dict, rules: MiningRules, rules_fingerprint: str, n_shards: int,
                       timing: dict) -> None:
    shards = [work / MINED / shard_name(s) for s in range(n_shards)]
    if not all(is_done(s, rules_fingerprint) for s in shards):
        print("mask: shards left for other processes or a rerun", file=sys.stderr)
        return
    summary = summarize(pl.scan_parquet([str(s) for s in shards]), rules.num_negatives)
    summary.update(rules=rules.as_dict(), k=plan["k"], index=plan["index"], timing=timing)
    write_json_atomic(summary, work / SUMMARY)
    write_json_atomic({"fingerprint": rules_fingerprint, "candidates_fingerprint": plan["fingerprint"],
                       "embed_fingerprint": plan["embed_fingerprint"], "rules": rules.as_dict(),
                       "shards": [f"{MINED}/{s.name}" for s in shards]}, work / MINED_MANIFEST)
    print(f"mask: {summary['anchors']} anchors, {summary['negatives_per_anchor']:.2f} hard negatives and "
          f"{summary['false_negatives_per_anchor']:.2f} false negatives per anchor, "
          f"{summary['anchors_short_of_negatives']} short of {rules.num_negatives}; details: {work / SUMMARY}",
          file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
