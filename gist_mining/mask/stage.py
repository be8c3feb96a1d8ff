"""Stage 2, ``mask``: search the pool for each anchor's candidates, then mine them under the rules: candidates/,
mined/, mined_summary.json and mined_manifest.json. ``refilter`` recomputes mined/ from candidates/ alone."""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import polars as pl

from gist_mining import given_negatives, grid, rescore, update, workdir
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.mask.mine_step import MineStep
from gist_mining.mask.plan import claim, mine_plan, search_plan
from gist_mining.mask.search_step import SearchStep, search_cells
from gist_mining.mask.settings import SearchSettings
from gist_mining.mining import MiningRules
from gist_mining.storage import write_json_atomic
from gist_mining.summary import summarize


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

    n_shards = search.anchor_shards
    candidates = workdir.Shards(work, workdir.CANDIDATES, n_shards, search.fingerprint)
    mined = workdir.Shards(work, workdir.MINED, n_shards, mining.fingerprint)
    started = time.perf_counter()
    if not refilter:
        if search.pool_slice_size:
            search_cells(search, candidates, executor, embed.dimension)
        run_step(SearchStep(candidates, search, rescore_settings, earlier_files, loaded_rescorer=rescorer), executor)
        if search.pool_slice_size:
            grid.Cells(work, search, needed=[]).remove_searched(candidates)
        candidates.finish(workdir.CANDIDATES_MANIFEST, workdir.CandidatesManifest, search.to_json())
    searched = time.perf_counter() - started
    run_step(MineStep(mined, candidates, rules), executor)
    timing = {"search_seconds": round(searched, 2), "total_seconds": round(time.perf_counter() - started, 2),
              **({"rescore_seconds": round(rescorer.seconds, 2)} if rescorer else {})}
    return finish(work, search, mined, rules, timing)


def finish(work: Path, search: workdir.SearchPlan, mined: workdir.Shards, rules: MiningRules,
           timing: dict) -> workdir.MinedManifest | None:
    """Whichever process finds every mined shard done writes the summary and the manifest later stages read."""
    if not (mined.complete() and (work / workdir.CANDIDATES_MANIFEST).exists()):
        print("mask: shards left for other processes or a rerun", file=sys.stderr)
        return None
    summary = summarize(pl.scan_parquet([str(mined.path(i)) for i in range(mined.n)]), rules.num_negatives)
    scored_by = {"score": rules.score, "rescore_model": (search.rescore or {}).get("name")}
    summary.update(rules=rules.as_dict(), k=search.k, index=search.index, timing=timing, **scored_by)
    write_json_atomic(summary, work / workdir.SUMMARY)
    manifest = mined.finish(workdir.MINED_MANIFEST, workdir.MinedManifest,
                            {"parent_fingerprint": search.fingerprint, "embed_fingerprint": search.parent_fingerprint,
                             "rules": rules.as_dict(), **scored_by})
    print(f"mask: {summary['anchors']} anchors, {rules.score} scores, {summary['negatives_per_anchor']:.2f} hard negatives and "
          f"{summary['false_negatives_per_anchor']:.2f} false negatives per anchor, "
          f"{summary['anchors_short_of_negatives']} short of {rules.num_negatives}, "
          f"{summary['anchors_the_guide_cannot_judge']} the guide cannot judge; details: {work / workdir.SUMMARY}",
          file=sys.stderr)
    return manifest
