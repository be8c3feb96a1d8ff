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
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from gist_mining import cli, given_negatives, grid, rescore, update, workdir
from gist_mining.errors import UsageError
from gist_mining.executor import ExecutorSettings, run_here, run_step, share
from gist_mining.mining import (
    CANDIDATE_SCHEMA,
    CANDIDATES_FORMAT,
    KINDS,
    MINED_SCHEMA,
    PAD_ID,
    SEARCHED_SCHEMA,
    MiningRules,
    PoolSearch,
    build_index,
    load_index,
    padded,
    parse_bytes,
    ragged,
    resolve_kind,
    save_index,
    search_depth,
    select,
)
from gist_mining.settings import HelpFormatter, add_options, dest_of, flag_of, from_args, option, to_argv
from gist_mining.storage import AtomicParquetWriter, config_fingerprint, write_json_atomic
from gist_mining.summary import summarize
from gist_mining.workdir import VectorStore, read_anchors, write_npy_atomic

CHUNK = 1024  # anchors searched and selected at a time: bounds memory whatever the number of anchors
# A search chunk's working set: its candidates' vectors (float32) read from the store and rescored. Fewer
# anchors per chunk when k, the index's search depth or the dimension is large; results do not depend on it.
CHUNK_BYTES = 256 << 20


@dataclass(frozen=True)
class SearchSettings:
    """What decides candidates/: --refilter takes these from the stored candidates, never from the command."""

    k: int = option(100, "candidates kept per anchor")
    index: str = option("auto", "exact while it fits the memory budget, then HNSW, HNSW over 8-bit vectors, IVF-PQ; "
                                "approximate finds are always rescored from the stored vectors", choices=KINDS)
    memory_budget: str = option("8G", "memory --index auto may plan for, e.g. 8G or 512M "
                                      "(gist_mining.mining.resolve_kind)")
    include_queries: bool = option(False, "other anchors' queries are candidates too (symmetric tasks, e.g. "
                                          "paraphrases)")
    # Stored as shard_size in plans.
    shard_size: int = option(100_000, "anchors per shard", flag="--anchors-per-shard")
    pool_slice_size: int | None = option(None, "search the pool in slices of this many texts, each exactly, one task "
                                               "per anchor shard and slice, then merge: memory per task bounded by the "
                                               "slice (gist_mining.grid)", type=int)


def build_parser(prog: str = "python -m pipeline.mask") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--work", required=True, type=Path, help="work directory (pipeline.embed's)")
    # Search settings parse to None when not given, so that --refilter can tell a given one from a default.
    add_options(parser.add_argument_group("search (--refilter takes these from candidates/)"), SearchSettings,
                unset_default=tuple(f.name for f in fields(SearchSettings)))
    add_options(parser.add_argument_group("mining rules"), MiningRules)
    parser.add_argument("--refilter", action="store_true",
                        help="recompute mined/ from candidates/ under new rules; search settings come from candidates/")
    parser.add_argument("--overwrite", action="store_true", help="search again, removing candidates/ and what follows")
    parser.add_argument("--update-from", type=Path, default=None, metavar="EARLIER_WORK",
                        help="an earlier work directory mined with the same guide, k and index, e.g. before pairs were "
                             "added: its anchors keep their candidates, searched only against texts new to the pool "
                             "(exact index: equal to a full search); see gist_mining.update")
    rescore.add_arguments(parser)
    add_options(parser.add_argument_group("executor"), ExecutorSettings)
    return parser


def search_plan(work: Path, given: dict, embed: dict, *, refilter: bool, update_from: Path | None,
                rescore_settings: rescore.RescoreSettings | None, rescorer: rescore.Rescorer | None,
                negatives_from: str = "corpus") -> dict:
    """The search settings: ``given`` (SearchSettings' fields; defaults filled in), or with ``refilter`` the
    stored ones, which ``given`` must not contradict. ``negatives_from`` given: no pool search
    (gist_mining.given_negatives)."""
    if refilter:
        stored = workdir.read_plan(work, "search")
        if stored is None:
            raise UsageError(f"{work}: no candidates/ to refilter; run `python -m pipeline.mask --work {work}` first")
        flags = {f.name: flag_of(f) for f in fields(SearchSettings)}
        clash = [f"{flags[k]} {v} (candidates/ have {stored[k]})" for k, v in given.items() if stored[k] != v]
        clash += rescore.refilter_clash(rescore_settings, stored) + ["--update-from (it searches)"] * bool(update_from)
        if clash:
            raise UsageError(f"--refilter takes the search settings from candidates/; drop {', '.join(clash)}")
        workdir.checked_candidates_manifest(work)  # candidates/ complete and made from the current embeddings
        if stored.get("candidates_format") != CANDIDATES_FORMAT:
            raise UsageError(f"{work}: candidates/ were searched by an older version (format "
                             f"{stored.get('candidates_format', 1)}, this one reads {CANDIDATES_FORMAT}); search again: "
                             f"`{workdir.rebuild_command(work, 'search')}`")
        return stored
    search = SearchSettings(**given)
    settings = asdict(search)
    # Every text is a query or a document (or both: a text in both roles is one pool entry), so with the queries
    # the pool is every text: what workdir.candidate_pool ranks.
    n_pool = embed["counts"]["texts" if settings["include_queries"] else "documents"]
    if settings["pool_slice_size"] is not None:
        if settings["index"] not in ("auto", "flat") or settings["pool_slice_size"] < 1 or update_from:
            raise UsageError("--pool-slice-size N (N >= 1) searches each slice exactly: drop --index "
                             f"{settings['index']} and --update-from")
        settings["index"] = "flat"
        settings["memory_budget"] = None  # it only chooses an index kind, and the grid's is flat: not in the fingerprint
    kind = resolve_kind(settings["index"], n_pool, embed["dimension"], parse_bytes(search.memory_budget))
    command = cli.command("pipeline.mask", ["--work", work, *to_argv(search),
                                            *(["--update-from", update_from] if update_from else []),
                                            *(to_argv(rescore_settings) if rescore_settings else [])])
    plan = dict(settings, index=kind, parent_fingerprint=embed["fingerprint"],
                pool_slices=-(-n_pool // settings["pool_slice_size"]) if settings["pool_slice_size"] else None,
                n_anchors=embed["counts"]["anchors"], rescore=rescorer.record if rescorer else None,
                candidates_format=CANDIDATES_FORMAT,
                update_from={"work": str(update_from), "fingerprint": update.earlier_search(update_from, work)}
                if update_from else None, command=command, **given_negatives.search_record(negatives_from))
    made_by = {k: plan[k] for k in (*settings, "parent_fingerprint", "rescore", "candidates_format")}
    made_by.update(given_negatives.search_record(negatives_from))
    if update_from:  # the earlier run's search, not its path (approximate lists and an extended index depend on it)
        made_by["earlier_search"] = plan["update_from"]["fingerprint"]
    plan["fingerprint"] = config_fingerprint(made_by)
    return plan


def mine_plan(search: dict, rules: MiningRules) -> dict:
    return {"rules": rules.as_dict(), "parent_fingerprint": search["fingerprint"],
            "fingerprint": config_fingerprint({"candidates": search["fingerprint"], "rules": rules.as_dict()})}


def claim(work: Path, search: dict, mining: dict, *, refilter: bool, overwrite: bool) -> None:
    """Candidates from other embeddings or search settings, or mined/ under other rules, are never reused silently."""
    with workdir.locked(work):
        if not refilter:
            changed = workdir.changed_keys(work, "search", search,
                                           ("parent_fingerprint", *asdict(SearchSettings()), "rescore", "update_from",
                                            "candidates_format", given_negatives.POOL_SEARCH))
            names = {"parent_fingerprint": "embeddings", "rescore": "rescore model", "update_from": "--update-from",
                     "candidates_format": "candidates format (an older version)",
                     given_negatives.POOL_SEARCH: "--negatives-from (--refilter re-filters a pool search for given)"}
            what = ", ".join(names.get(k, k) for k in changed) or "settings"
            workdir.claim(work, "search", search, replace=overwrite,
                          refusal=f"{work}: candidates/ were made with other {what}; pass --overwrite to search again "
                                  "(it removes candidates/ and everything made from them)")
        old_rules = (workdir.read_plan(work, "mine") or {}).get("rules")
        workdir.claim(work, "mine", mining, replace=refilter or overwrite,
                      refusal=f"{work}: mined/ holds other rules ({json.dumps(old_rules)}); "
                              "pass --refilter to recompute it from candidates/ under the new rules")
        workdir.remove_temps(work)


def prepare_index(work: Path, store: VectorStore, plan: dict, earlier: update.EarlierCandidates | None):
    """Built once per search plan, behind a marker (from the earlier run's index where it can be: ``earlier``);
    shard processes and resumed runs load it."""
    index_path, ids_path, marker = workdir.index_files(work)

    def build():
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
        return [index_path, ids_path], {"kind": plan["index"], "vectors": len(pool_ids),
                                        "seconds": round(time.perf_counter() - started, 2),
                                        "extended_from": str(earlier.earlier) if extended else None}

    workdir.build_once(work, marker, plan["fingerprint"], build)
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


@dataclass
class SearchStep:
    """The search step (``gist_mining.executor.ShardStep``): candidates/ shard s holds anchors
    s * shard_size .. (s + 1) * shard_size, searched against the index of the plan's pool (built once, behind its
    marker, by whichever worker opens first). ``loaded_rescorer``: the driver's cross-encoder, reused by a local
    executor and never pickled."""

    shards: workdir.Shards
    plan: dict
    rescore: rescore.RescoreSettings | None = None  # None: the candidates carry no cross-encoder scores
    earlier_files: list[Path] | None = None  # --update-from: the earlier run's checked candidates
    loaded_rescorer: rescore.Rescorer | None = field(default=None, repr=False, compare=False)
    name: str = "search"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "loaded_rescorer": None}

    def open(self) -> SearchWorker:
        work, plan = self.shards.work, self.plan
        store, query_store = VectorStore(work), VectorStore(work, "query")
        earlier = update.EarlierCandidates(self.earlier_files, work, plan, store) if self.earlier_files else None
        if earlier:
            earlier.split_by_shard(work, plan)
        lists = None
        if not given_negatives.searches_pool(plan):  # --negatives-from given: the given negatives alone, no index
            find, chunk = given_negatives.no_candidates, chunk_size(plan["k"], 1, store.dimension)
        elif plan.get("pool_slice_size"):  # the grid's cells hold each slice's lists: no index of the pool
            chunk = chunk_size(plan["k"], 1, store.dimension)
            find = lists = grid.GridLists(grid.Cells(work, plan, needed=[]), plan["k"], chunk)
        else:
            index, pool_ids = prepare_index(work, store, plan, earlier)  # the pool in the document role, queries too
            # Only an approximate index needs the pool's vectors again, read row by row, to score its finds exactly.
            search_all = PoolSearch(index, pool_ids, None if plan["index"] == "flat" else store.view(pool_ids), plan["k"])
            find = partial(earlier.find, search_all=search_all) if earlier else \
                lambda _query_ids, queries, exclude: search_all(queries, exclude)
            chunk = chunk_size(plan["k"], search_depth(index), store.dimension)
        rescorer = self.loaded_rescorer or (rescore.Rescorer(work, self.rescore) if self.rescore else None)
        path, exclusions = workdir.anchor_exclusions(work)
        return SearchWorker(store, query_store, find, earlier, lists, rescorer, path, exclusions, chunk)

    def run(self, worker: SearchWorker, s: int) -> None:
        size = self.plan["shard_size"]
        part = read_anchors(worker.anchors, worker.exclusions, s * size, size)  # one shard's anchors at a time
        if worker.earlier:
            worker.earlier.load(part, s, self.shards.work)
        if worker.grid:
            worker.grid.load(s)
        with AtomicParquetWriter(self.shards.path(s), CANDIDATE_SCHEMA) as out, \
                tqdm(total=part.height, unit="anchor", desc=f"search shard {s}", leave=False) as progress:
            for start in range(0, part.height, worker.chunk):
                chunk = part.slice(start, worker.chunk)
                searched = search_chunk(chunk, worker.store, worker.query_store, worker.find)
                out.write(rescore.with_rescores(searched, worker.rescorer))
                progress.update(chunk.height)

    def close(self, worker: SearchWorker) -> None:
        earlier = worker.earlier
        if earlier:
            print(f"mask: {earlier.reused} anchors kept their candidates from {earlier.earlier}, searched against the "
                  f"{len(earlier.new_texts)} texts new to the pool; {earlier.searched} searched in full", file=sys.stderr)


@dataclass
class SearchWorker:
    store: VectorStore
    query_store: VectorStore
    find: object  # search_chunk's ``find``
    earlier: update.EarlierCandidates | None
    grid: grid.GridLists | None
    rescorer: rescore.Rescorer | None
    anchors: Path
    exclusions: pl.DataFrame
    chunk: int  # anchors searched at a time


@dataclass
class MineStep:
    """The mine step (``gist_mining.executor.ShardStep``): mined/ shard s is candidates/ shard s under the rules."""

    shards: workdir.Shards
    candidates: workdir.Shards
    rules: MiningRules
    name: str = "mine"

    def open(self) -> None:
        return None

    def run(self, _state, s: int) -> None:
        candidates = self.candidates
        wrong = workdir.problem(candidates.path(s), candidates.record(s))
        if wrong:
            raise UsageError(f"{candidates.path(s)}: {wrong}; rebuild it with "
                             f"`{workdir.rebuild_command(candidates.work, 'search').removesuffix(' --overwrite')}`")
        with AtomicParquetWriter(self.shards.path(s), MINED_SCHEMA) as out:
            for batch in pq.ParquetFile(candidates.path(s)).iter_batches(batch_size=CHUNK):
                out.write(select(pa.Table.from_batches([batch]), self.rules))

    def close(self, _state) -> None:
        pass


def mask(work: Path, search: SearchSettings | None = None, rules: MiningRules = MiningRules(), *,
         rescore_settings: rescore.RescoreSettings | None = None, refilter: bool = False, overwrite: bool = False,
         update_from: Path | None = None, executor: ExecutorSettings = ExecutorSettings()) -> dict | None:
    """Search the pool of ``work`` (``embed``'s) for each anchor's candidates and mine them under ``rules``:
    candidates/, mined/, mined_summary.json and mined_manifest.json. ``search`` None: the defaults, or with
    ``refilter`` (mined/ recomputed from candidates/ under new rules) the stored settings. Returns the mined
    manifest, or None while shards are left for other processes."""
    return run_mask(work, {} if search is None else asdict(search), rules, rescore_settings=rescore_settings,
                    refilter=refilter, overwrite=overwrite, update_from=update_from, executor=executor)


def run_mask(work: Path, given: dict, rules: MiningRules, *, rescore_settings, refilter: bool, overwrite: bool,
             update_from: Path | None, executor: ExecutorSettings) -> dict | None:
    """``mask`` with only the ``given`` search settings (the command line's: --refilter checks them alone)."""
    work = Path(work)
    embed = workdir.checked_embed_manifest(work)
    rescorer = rescore.Rescorer(work, rescore_settings) if rescore_settings and not refilter else None
    search = search_plan(work, given, embed, refilter=refilter, update_from=update_from,
                         rescore_settings=rescore_settings, rescorer=rescorer, negatives_from=rules.negatives_from)
    given_negatives.check(rules.negatives_from, search, work, pool_slice_size=given.get("pool_slice_size"),
                          update_from=update_from)
    rescore.require_scores(rules, search, work)
    mining = mine_plan(search, rules)
    earlier_files = update.checked_files(update_from, work, search) if update_from else None
    claim(work, search, mining, refilter=refilter, overwrite=overwrite)

    n_shards = workdir.anchor_shard_count(search)
    candidates = workdir.Shards(work, workdir.CANDIDATES, n_shards, search["fingerprint"])
    mined = workdir.Shards(work, workdir.MINED, n_shards, mining["fingerprint"])
    started = time.perf_counter()
    if not refilter:
        if search["pool_slice_size"]:
            search_cells(search, candidates, executor, embed["dimension"])
        run_step(SearchStep(candidates, search, rescore_settings, earlier_files, loaded_rescorer=rescorer), executor)
        if search["pool_slice_size"]:
            grid.Cells(work, search, needed=[]).remove_searched(candidates)
        candidates.finish(workdir.CANDIDATES_MANIFEST, {k: v for k, v in search.items() if k != "fingerprint"})
    searched = time.perf_counter() - started
    run_step(MineStep(mined, candidates, rules), executor)
    timing = {"search_seconds": round(searched, 2), "total_seconds": round(time.perf_counter() - started, 2),
              **({"rescore_seconds": round(rescorer.seconds, 2)} if rescorer else {})}
    return finish(work, search, mined, rules, timing)


def main(argv=None, prog: str = "python -m pipeline.mask") -> None:
    args = build_parser(prog).parse_args(argv)
    given = {f.name: getattr(args, dest_of(f)) for f in fields(SearchSettings) if getattr(args, dest_of(f)) is not None}
    run_mask(args.work, given, from_args(MiningRules, args),
             rescore_settings=from_args(rescore.RescoreSettings, args) if args.rescore_model else None,
             refilter=args.refilter, overwrite=args.overwrite, update_from=args.update_from,
             executor=from_args(ExecutorSettings, args))


def search_cells(search: dict, candidates: workdir.Shards, executor: ExecutorSettings, dimension: int) -> None:
    """The grid's cells of the anchor shards left to search: on Ray all of them, locally those of this process's
    share, done by this process (the search of a shard reads all its cells)."""
    mine = list(range(candidates.n)) if executor.executor == "ray" else share(executor, candidates.n, "mask")
    cells = grid.Cells(candidates.work, search, needed=candidates.pending(mine))
    VectorStore(candidates.work), VectorStore(candidates.work, "query")  # built here once, not by each worker at once
    step = grid.CellStep(cells, search, chunk_size(search["k"], 1, dimension))  # the search step's chunks
    print(f"grid: {len(cells.needed)} anchor shard(s) x {cells.n_slices} pool slice(s) to search", file=sys.stderr)
    if executor.executor == "ray":
        run_step(step, executor)
    else:  # this process's share is taken above: it does every cell of its anchor shards
        run_here(step, list(range(cells.n)))


def finish(work: Path, search: dict, mined: workdir.Shards, rules: MiningRules, timing: dict) -> dict | None:
    """Whichever process finds every mined shard done writes the summary and the manifest later stages read."""
    if not (mined.complete() and (work / workdir.CANDIDATES_MANIFEST).exists()):
        print("mask: shards left for other processes or a rerun", file=sys.stderr)
        return None
    summary = summarize(pl.scan_parquet([str(mined.path(i)) for i in range(mined.n)]), rules.num_negatives)
    scored_by = {"score": rules.score, "rescore_model": (search.get("rescore") or {}).get("name")}
    summary.update(rules=rules.as_dict(), k=search["k"], index=search["index"], timing=timing, **scored_by)
    write_json_atomic(summary, work / workdir.SUMMARY)
    manifest = mined.finish(workdir.MINED_MANIFEST, {"parent_fingerprint": search["fingerprint"], **scored_by,
                                                     "embed_fingerprint": search["parent_fingerprint"],
                                                     "rules": rules.as_dict()})
    print(f"mask: {summary['anchors']} anchors, {rules.score} scores, {summary['negatives_per_anchor']:.2f} hard negatives and "
          f"{summary['false_negatives_per_anchor']:.2f} false negatives per anchor, "
          f"{summary['anchors_short_of_negatives']} short of {rules.num_negatives}, "
          f"{summary['anchors_the_guide_cannot_judge']} the guide cannot judge; details: {work / workdir.SUMMARY}",
          file=sys.stderr)
    return manifest


if __name__ == "__main__":
    cli.run(main)
