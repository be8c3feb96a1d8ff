"""Stage 2: FAISS search, positive-aware hard negatives and false-negative masks, all with guide scores.

    python -m pipeline.mask --work runs/sample
    python -m pipeline.mask --work runs/sample --refilter --margin-strategy absolute --margin 0.1
    python -m pipeline.mask --work runs/sample --rescore-model cross-encoder/ms-marco-MiniLM-L6-v2 --score rescore
    python -m pipeline.mask --work runs/sample-v2 --update-from runs/sample   # after pairs were added

Reads the embed stage's work directory and writes:
  index/            the FAISS index over the candidate pool and its pool ids
  candidates/       per anchor: k nearest candidate text_ids with exact guide scores, positive score and
                    given negatives with scores (and a cross-encoder's scores of the same pairs, with
                    --rescore-model); everything a later rule needs without a new search
  mined/            per anchor: hard negatives, false negatives, flags on given negatives, all with scores
  mined_summary.json
--refilter recomputes mined/ from candidates/ under new rules, without embeddings or search.
--update-from keeps an earlier run's candidates where they still hold and searches them only against the texts
new to the pool (gist_mining.update).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from gist_mining import cli, rescore, update, workdir
from gist_mining.errors import UsageError
from gist_mining.mining import (CANDIDATE_SCHEMA, KINDS, MINED_SCHEMA, PAD_ID, SCORES, SEARCHED_SCHEMA, STRATEGIES,
                                 MiningRules, PoolSearch, build_index, load_index, padded, parse_bytes, ragged,
                                 resolve_kind, save_index, search_depth, select)
from gist_mining.storage import AtomicParquetWriter, config_fingerprint, file_sha256, write_json_atomic
from gist_mining.summary import summarize
from gist_mining.workdir import VectorStore, write_npy_atomic

CHUNK = 1024  # anchors searched and selected at a time: bounds memory whatever the number of anchors
# A search chunk's working set: its candidates' vectors (float32) read from the store and rescored. Fewer
# anchors per chunk when k, the index's search depth or the dimension is large; results do not depend on it.
CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class SearchSettings:
    """What decides candidates/: --refilter takes these from the stored candidates, never from the command."""

    k: int = 100
    index: str = "auto"
    memory_budget: str = "8G"  # what --index auto may spend (gist_mining.mining.resolve_kind)
    include_queries: bool = False
    shard_size: int = 100_000


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pipeline.mask", description=__doc__.split("\n")[0])
    search, rules = SearchSettings(), MiningRules()
    parser.add_argument("--work", required=True, type=Path)
    # Search settings default to None so that --refilter can tell a given one from a default.
    parser.add_argument("--k", type=int, default=None, help=f"candidates kept per anchor (default {search.k})")
    parser.add_argument("--index", choices=KINDS, default=None,
                        help=f"default {search.index}: exact while it fits the memory budget, then HNSW, HNSW over "
                             "8-bit vectors, IVF-PQ; approximate finds are always rescored from the stored vectors")
    parser.add_argument("--memory-budget", default=None,
                        help=f"memory --index auto may plan for, e.g. 8G or 512M (default {search.memory_budget})")
    parser.add_argument("--include-queries", action="store_true", default=None,
                        help="other anchors' queries are candidates too (symmetric tasks, e.g. paraphrases)")
    parser.add_argument("--shard-size", type=int, default=None, help=f"anchors per shard (default {search.shard_size})")
    parser.add_argument("--margin-strategy", choices=STRATEGIES, default=rules.margin_strategy)
    parser.add_argument("--margin", type=float, default=rules.margin)
    parser.add_argument("--min-score", type=float, default=rules.min_score, help="drop candidates below this (too easy)")
    parser.add_argument("--max-score", type=float, default=rules.max_score,
                        help="flag candidates above this as false negatives")
    parser.add_argument("--rank-min", type=int, default=rules.rank_min, help="skip this many top surviving candidates")
    parser.add_argument("--unjudged-rank-min", type=int, default=rules.unjudged_rank_min,
                        help="anchors the guide cannot judge (positive below most candidates): no margin rule, "
                             "skip this many top candidates instead (default: the margin rule for all)")
    parser.add_argument("--num-negatives", type=int, default=rules.num_negatives)
    parser.add_argument("--sampling", choices=["top", "random"], default=rules.sampling)
    parser.add_argument("--seed", type=int, default=rules.seed)
    parser.add_argument("--score", choices=SCORES, default=rules.score,
                        help="scores the rules read: the guide's, or --rescore-model's (which re-ranks the candidates)")
    parser.add_argument("--refilter", action="store_true",
                        help="recompute mined/ from candidates/ under new rules; search settings come from candidates/")
    parser.add_argument("--overwrite", action="store_true", help="search again, removing candidates/ and what follows")
    parser.add_argument("--update-from", type=Path, default=None, metavar="EARLIER_WORK",
                        help="an earlier work directory mined with the same guide, k and index, e.g. before pairs were "
                             "added: its anchors keep their candidates, searched only against texts new to the pool "
                             "(exact index: equal to a full search); see gist_mining.update")
    cli.shard_arguments(parser)
    rescore.add_arguments(parser)
    return parser.parse_args(argv)


def rules_from(args) -> MiningRules:
    return MiningRules(**{f.name: getattr(args, f.name) for f in fields(MiningRules)})


def search_plan(args, argv, embed: dict, rescorer: rescore.Rescorer | None) -> dict:
    """The search settings: the command's (defaults filled in), or with --refilter the stored ones."""
    given = {f.name: getattr(args, f.name) for f in fields(SearchSettings) if getattr(args, f.name) is not None}
    if args.refilter:
        stored = workdir.read_plan(args.work, "search")
        if stored is None:
            raise UsageError(f"{args.work}: no candidates/ to refilter; run `python -m pipeline.mask --work {args.work}` first")
        clash = [f"--{k.replace('_', '-')} {v} (candidates/ have {stored[k]})" for k, v in given.items() if stored[k] != v]
        clash += rescore.refilter_clash(args, stored) + ["--update-from (it searches)"] * bool(args.update_from)
        if clash:
            raise UsageError(f"--refilter takes the search settings from candidates/; drop {', '.join(clash)}")
        workdir.candidates(args.work)  # candidates/ complete and made from the current embeddings
        return stored
    settings = asdict(SearchSettings(**given))
    n_pool = embed["counts"]["documents"] + (embed["counts"]["queries"] if settings["include_queries"] else 0)
    kind = resolve_kind(settings["index"], n_pool, embed["dimension"], parse_bytes(settings["memory_budget"]))
    plan = dict(settings, index=kind, parent_fingerprint=embed["fingerprint"],
                n_anchors=embed["counts"]["anchors"], rescore=rescorer.record if rescorer else None,
                update_from={"work": str(args.update_from), "fingerprint": update.earlier_search(args.update_from, args.work)}
                if args.update_from else None, command=cli.command("pipeline.mask", argv))
    made_by = {k: plan[k] for k in (*settings, "parent_fingerprint", "rescore")}
    if args.update_from:  # the earlier run's search, not its path (approximate lists and an extended index depend on it)
        made_by["earlier_search"] = plan["update_from"]["fingerprint"]
    plan["fingerprint"] = config_fingerprint(made_by)
    return plan


def mine_plan(search: dict, rules: MiningRules) -> dict:
    return {"rules": rules.as_dict(), "parent_fingerprint": search["fingerprint"],
            "fingerprint": config_fingerprint({"candidates": search["fingerprint"], "rules": rules.as_dict()})}


def claim(work: Path, search: dict, mining: dict, args) -> None:
    """Candidates from other embeddings or search settings, or mined/ under other rules, are never reused silently."""
    with workdir.locked(work):
        if not args.refilter:
            changed = workdir.changed_keys(work, "search", search,
                                           ("parent_fingerprint", *asdict(SearchSettings()), "rescore", "update_from"))
            names = {"parent_fingerprint": "embeddings", "rescore": "rescore model", "update_from": "--update-from"}
            what = ", ".join(names.get(k, k) for k in changed) or "settings"
            workdir.claim(work, "search", search, replace=args.overwrite,
                          refusal=f"{work}: candidates/ were made with other {what}; pass --overwrite to search again "
                                  "(it removes candidates/ and everything made from them)")
        old_rules = (workdir.read_plan(work, "mine") or {}).get("rules")
        workdir.claim(work, "mine", mining, replace=args.refilter or args.overwrite,
                      refusal=f"{work}: mined/ holds other rules ({json.dumps(old_rules)}); "
                              "pass --refilter to recompute it from candidates/ under the new rules")
        workdir.remove_temps(work)


def read_anchors(path: Path, exclusions: pl.DataFrame, start: int, length: int) -> pl.DataFrame:
    """Anchors start .. start + length (anchor_id is the row number: pipeline.embed writes them in order)
    with their exclusions, read without the rest."""
    part = pl.scan_parquet(path).slice(start, length).collect()
    return part.join(exclusions, on="query_id", how="left", maintain_order="left")


def prepare_index(work: Path, store: VectorStore, plan: dict, earlier: update.EarlierCandidates | None):
    """Built once per search plan, behind a marker (from the earlier run's index where it can be: ``earlier``);
    shard processes and resumed runs load it."""
    index_path, ids_path, marker = workdir.index_files(work)
    with workdir.locked(work):
        if not workdir.index_ready(work, plan["fingerprint"]):
            started = time.perf_counter()
            extended = earlier.extended_index(store) if earlier else None
            if extended is None:
                pool_ids = workdir.candidate_pool(work, plan["include_queries"])
                index = build_index(store.view(pool_ids), plan["index"], plan["k"])
            else:
                index, pool_ids = extended
            save_index(index, index_path)
            del index  # the copy loaded below is the one searched
            write_npy_atomic(pool_ids, ids_path)
            write_json_atomic({"fingerprint": plan["fingerprint"], "kind": plan["index"], "vectors": len(pool_ids),
                               "seconds": round(time.perf_counter() - started, 2),
                               "extended_from": str(earlier.earlier) if extended else None,
                               **{p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                                  for p in (index_path, ids_path)}}, marker)
    return load_index(index_path, plan["k"]), np.load(ids_path, allow_pickle=False)


def search_chunk(anchors: pl.DataFrame, store: VectorStore, query_store: VectorStore, find) -> pa.Table:
    """Every score is query role (the anchor's query) x document role (positive, given negatives, the pool).
    ``find(query_ids, query_vectors, exclude)``: the anchors' candidates (ids and scores, as search_candidates)."""
    queries = query_store.get(anchors["query_id"].to_numpy())
    positive_scores = np.einsum("nd,nd->n", queries, store.get(anchors["positive_id"].to_numpy()))
    given = padded(anchors["negative_ids"].to_arrow(), PAD_ID, np.int64)
    given_vectors = store.get(given[given != PAD_ID]) if given.size else np.zeros((0, queries.shape[1]), np.float32)
    given_scores = np.full(given.shape, -np.inf, dtype=np.float32)
    given_scores[given != PAD_ID] = np.einsum("nd,nd->n", np.repeat(queries, (given != PAD_ID).sum(1), axis=0),
                                             given_vectors)
    exclude = padded(anchors["exclude_ids"].to_arrow(), PAD_ID, np.int64)
    positives = exclude[:, 1:]  # the query, then each of its positives (workdir.anchor_exclusions)
    every_positive = np.full(positives.shape, np.inf, dtype=np.float32)
    every_positive[positives != PAD_ID] = np.einsum("nd,nd->n", np.repeat(queries, (positives != PAD_ID).sum(1), axis=0),
                                                    store.get(positives[positives != PAD_ID]))
    ids, scores = find(anchors["query_id"].to_numpy(), queries, exclude)
    return pa.table({
        "anchor_id": anchors["anchor_id"].to_arrow(), "query_id": anchors["query_id"].to_arrow(),
        "positive_id": anchors["positive_id"].to_arrow(), "task": anchors["task"].to_arrow(),
        "positive_score": pa.array(positive_scores, type=pa.float32()),
        "candidate_ids": ragged(ids, ids != PAD_ID, pa.int64()),
        "candidate_scores": ragged(scores, ids != PAD_ID, pa.float32()),
        "given_negative_ids": anchors["negative_ids"].to_arrow(),
        "given_negative_scores": ragged(given_scores, given != PAD_ID, pa.float32()),
        "weakest_positive_score": pa.array(every_positive.min(axis=1), type=pa.float32()),
    }, schema=SEARCHED_SCHEMA)


def chunk_size(k: int, depth: int, dim: int) -> int:
    return max(1, min(CHUNK, CHUNK_BYTES // (depth * k * dim * 4)))


def search_shards(work: Path, plan: dict, shards: workdir.Shards, todo: list[int],
                  rescorer: rescore.Rescorer | None, earlier_files: list[Path] | None) -> None:
    store, query_store = VectorStore(work), VectorStore(work, "query")
    earlier = update.EarlierCandidates(earlier_files, work, plan, store) if earlier_files and todo else None
    if earlier:
        earlier.split_by_shard(work, plan)
    index, pool_ids = prepare_index(work, store, plan, earlier)  # the pool in the document role, queries included
    # Only an approximate index needs the pool's vectors again, read row by row, to score its finds exactly.
    search_all = PoolSearch(index, pool_ids, None if plan["index"] == "flat" else store.view(pool_ids), plan["k"])
    find = partial(earlier.find, search_all=search_all) if earlier else \
        lambda _query_ids, queries, exclude: search_all(queries, exclude)
    path, exclusions = workdir.anchor_exclusions(work)
    size, step = plan["shard_size"], chunk_size(plan["k"], search_depth(index), store.dimension)
    total = sum(min(size, plan["n_anchors"] - s * size) for s in todo)
    with tqdm(total=total, unit="anchor", desc="search") as progress:
        for s in todo:
            part = read_anchors(path, exclusions, s * size, size)  # one shard's anchors at a time
            if earlier:
                earlier.load(part, s, work)
            with AtomicParquetWriter(shards.path(s), CANDIDATE_SCHEMA) as out:
                for start in range(0, part.height, step):
                    chunk = part.slice(start, step)
                    searched = search_chunk(chunk, store, query_store, find)
                    out.write(rescore.with_rescores(searched, rescorer))
                    progress.update(chunk.height)
            shards.mark_done(s)
    if earlier:
        print(f"mask: {earlier.reused} anchors kept their candidates from {earlier.earlier}, searched against the "
              f"{len(earlier.new_texts)} texts new to the pool; {earlier.searched} searched in full", file=sys.stderr)


def mine_shards(candidates: workdir.Shards, mined: workdir.Shards, todo: list[int], rules: MiningRules) -> None:
    for s in todo:
        wrong = workdir.problem(candidates.path(s), candidates.record(s))
        if wrong:
            raise UsageError(f"{candidates.path(s)}: {wrong}; rebuild it with "
                             f"`{workdir.rebuild_command(candidates.work, 'search').removesuffix(' --overwrite')}`")
        with AtomicParquetWriter(mined.path(s), MINED_SCHEMA) as out:
            for batch in pq.ParquetFile(candidates.path(s)).iter_batches(batch_size=CHUNK):
                out.write(select(pa.Table.from_batches([batch]), rules))
        mined.mark_done(s)


def main(argv=None) -> None:
    args = parse_args(argv)
    rules = rules_from(args)
    work = args.work
    embed = workdir.embeddings(work)
    rescorer = rescore.Rescorer.from_args(work, args)
    search = search_plan(args, argv, embed, rescorer)
    rescore.require_scores(rules, search, work)
    mining = mine_plan(search, rules)
    earlier_files = update.checked_files(args.update_from, work, search) if args.update_from else None
    claim(work, search, mining, args)

    n_shards = -(-search["n_anchors"] // search["shard_size"])
    candidates = workdir.Shards(work, workdir.CANDIDATES, n_shards, search["fingerprint"])
    mined = workdir.Shards(work, workdir.MINED, n_shards, mining["fingerprint"])
    my = cli.my_shards(args, n_shards, "mask")
    started = time.perf_counter()
    if not args.refilter:
        search_shards(work, search, candidates, candidates.pending(my), rescorer, earlier_files)
        candidates.finish(workdir.CANDIDATES_MANIFEST, {k: v for k, v in search.items() if k != "fingerprint"})
    searched = time.perf_counter() - started
    mine_shards(candidates, mined, mined.pending(my), rules)
    timing = {"search_seconds": round(searched, 2), "total_seconds": round(time.perf_counter() - started, 2),
              **({"rescore_seconds": round(rescorer.seconds, 2)} if rescorer else {})}
    finish(work, search, mined, rules, timing)


def finish(work: Path, search: dict, mined: workdir.Shards, rules: MiningRules, timing: dict) -> None:
    """Whichever process finds every mined shard done writes the summary and the manifest later stages read."""
    if not (mined.complete() and (work / workdir.CANDIDATES_MANIFEST).exists()):
        print("mask: shards left for other processes or a rerun", file=sys.stderr)
        return
    summary = summarize(pl.scan_parquet([str(mined.path(i)) for i in range(mined.n)]), rules.num_negatives)
    scored_by = {"score": rules.score, "rescore_model": (search.get("rescore") or {}).get("name")}
    summary.update(rules=rules.as_dict(), k=search["k"], index=search["index"], timing=timing, **scored_by)
    write_json_atomic(summary, work / workdir.SUMMARY)
    mined.finish(workdir.MINED_MANIFEST, {"parent_fingerprint": search["fingerprint"], **scored_by,
                                          "embed_fingerprint": search["parent_fingerprint"], "rules": rules.as_dict()})
    print(f"mask: {summary['anchors']} anchors, {rules.score} scores, {summary['negatives_per_anchor']:.2f} hard negatives and "
          f"{summary['false_negatives_per_anchor']:.2f} false negatives per anchor, "
          f"{summary['anchors_short_of_negatives']} short of {rules.num_negatives}, "
          f"{summary['anchors_the_guide_cannot_judge']} the guide cannot judge; details: {work / workdir.SUMMARY}",
          file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
