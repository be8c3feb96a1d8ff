"""The mask stage's plans (the search's and the mining rules') and their claim on a work directory: candidates from
other embeddings or search settings, or mined/ under other rules, are never reused silently."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from gist_mining import cli, given_negatives, rescore, update, workdir
from gist_mining.errors import UsageError
from gist_mining.mask.settings import SearchSettings
from gist_mining.mining import CANDIDATES_FORMAT, MiningRules
from gist_mining.mining.index import parse_bytes, resolve_kind
from gist_mining.settings import flag_of, to_argv
from gist_mining.storage import config_fingerprint


def search_plan(work: Path, given: dict, embed: workdir.EmbedManifest, *, refilter: bool, update_from: Path | None,
                rescore_settings: rescore.RescoreSettings | None, rescorer: rescore.Rescorer | None,
                negatives_from: str = "corpus") -> workdir.SearchPlan:
    """The search settings: ``given`` (SearchSettings' fields; defaults filled in), or with ``refilter`` the
    stored ones, which ``given`` must not contradict. ``negatives_from`` given: no pool search
    (gist_mining.given_negatives)."""
    if refilter:
        stored = workdir.read_plan(work, "search")
        if stored is None:
            raise UsageError(f"{work}: no candidates/ to refilter; run `python -m pipeline.mask --work {work}` first")
        stored = workdir.SearchPlan.from_json(stored)
        flags = {f.name: flag_of(f) for f in fields(SearchSettings)}
        clash = [f"{flags[k]} {v} (candidates/ have {getattr(stored, k)})" for k, v in given.items()
                 if getattr(stored, k) != v]
        clash += rescore.refilter_clash(rescore_settings, stored) + ["--update-from (it searches)"] * bool(update_from)
        if clash:
            raise UsageError(f"--refilter takes the search settings from candidates/; drop {', '.join(clash)}")
        workdir.checked_candidates_manifest(work)  # candidates/ complete and made from the current embeddings
        if stored.candidates_format != CANDIDATES_FORMAT:
            raise UsageError(f"{work}: candidates/ were searched by an older version (format "
                             f"{stored.candidates_format}, this one reads {CANDIDATES_FORMAT}); search again: "
                             f"`{workdir.rebuild_command(work, 'search')}`")
        return stored
    search_settings = SearchSettings(**given)
    settings = asdict(search_settings)
    # Every text is a query or a document (or both: a text in both roles is one pool entry), so with the queries
    # the pool is every text: what workdir.candidate_pool ranks.
    n_pool = embed.counts["texts" if settings["include_queries"] else "documents"]
    if settings["pool_slice_size"] is not None:
        if settings["index"] not in ("auto", "flat") or settings["pool_slice_size"] < 1 or update_from:
            raise UsageError("--pool-slice-size N (N >= 1) searches each slice exactly: drop --index "
                             f"{settings['index']} and --update-from")
        settings["index"] = "flat"
        settings["memory_budget"] = None  # it only chooses an index kind, and the grid's is flat: not in the fingerprint
    kind = resolve_kind(settings["index"], n_pool, embed.dimension, parse_bytes(search_settings.memory_budget))
    command = cli.command("pipeline.mask", ["--work", work, *to_argv(search_settings),
                                            *(["--update-from", update_from] if update_from else []),
                                            *(to_argv(rescore_settings) if rescore_settings else [])])
    plan = dict(settings, index=kind, parent_fingerprint=embed.fingerprint,
                pool_slices=-(-n_pool // settings["pool_slice_size"]) if settings["pool_slice_size"] else None,
                n_anchors=embed.counts["anchors"], rescore=rescorer.record if rescorer else None,
                candidates_format=CANDIDATES_FORMAT,
                update_from={"work": str(update_from), "fingerprint": update.earlier_search(update_from, work)}
                if update_from else None, command=command, **given_negatives.search_record(negatives_from))
    made_by = {k: plan[k] for k in (*settings, "parent_fingerprint", "rescore", "candidates_format")}
    made_by.update(given_negatives.search_record(negatives_from))
    if update_from:  # the earlier run's search, not its path (approximate lists and an extended index depend on it)
        made_by["earlier_search"] = plan["update_from"]["fingerprint"]
    return workdir.SearchPlan.from_json(dict(plan, fingerprint=config_fingerprint(made_by)))


def mine_plan(search: workdir.SearchPlan, rules: MiningRules) -> workdir.MinePlan:
    return workdir.MinePlan(rules=rules, parent_fingerprint=search.fingerprint,
                            fingerprint=config_fingerprint({"candidates": search.fingerprint, "rules": rules.as_dict()}))


def claim(work: Path, search: workdir.SearchPlan, mining: workdir.MinePlan, *, refilter: bool, overwrite: bool) -> None:
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
