"""The embed stage's plan (the guide's fingerprint, the settings, the inputs, the shards' bounds) and its claim on a
work directory: texts.parquet and anchors.parquet moved in, another run's directory refused."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from gist_mining import planning, workdir
from gist_mining.embed.settings import EmbedOptions, EmbedSettings
from gist_mining.models import ModelSettings, model_fingerprint, resolve_model
from gist_mining.storage import commit, config_fingerprint, tmp_name, write_json_atomic


def shard_bounds(n_texts: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + shard_size, n_texts)) for start in range(0, n_texts, shard_size)]


def make_plan(guide: ModelSettings, model, options: EmbedOptions, prompts: dict[str, str], backend: str,
              counts: dict, inputs: list[dict], command: str) -> workdir.EmbedPlan:
    settings = EmbedSettings(dtype=options.dtype, precision=options.precision, shard_size=options.texts_per_shard,
                             query_prompt=prompts["query"], document_prompt=prompts["document"], backend=backend)
    model_info = dict(model_fingerprint(model, resolve_model(guide.name, guide.revision)), name=guide.name)
    return plan_for(model_info, settings, inputs, command, counts)


def plan_for(model_info: dict, settings: EmbedSettings, inputs: list[dict], command: str,
             counts: dict) -> workdir.EmbedPlan:
    """The embed plan of a guide (``model_info``: its fingerprint and dimension) over planned texts and anchors
    (``counts``: planning.Planned's)."""
    fingerprint = config_fingerprint(
        {"model": model_info["fingerprint"], "settings": settings.as_dict(),
         "inputs": [{k: v for k, v in i.items() if k != "path"} for i in inputs]})  # a file moved is the same input
    return workdir.EmbedPlan(
        model=model_info, settings=settings.as_dict(), inputs=inputs, command=command, fingerprint=fingerprint,
        dimension=model_info["dimension"], dtype=settings.dtype, bounds=shard_bounds(counts["texts"], settings.shard_size),
        counts={k: counts[k] for k in ("anchors", "texts", "queries", "documents", "skipped_rows") if k in counts})


def write_tables(work: Path, plan: workdir.EmbedPlan, planned: planning.Planned, resumed: bool) -> workdir.EmbedPlan:
    """texts.parquet and anchors.parquet moved in from planning, recorded in the plan; a resumed run replaces
    them only if damaged."""
    tables = (workdir.TEXTS, workdir.ANCHORS) + ((workdir.SKIPPED,) if planned.path(workdir.SKIPPED).exists() else ())
    recorded = plan.tables if resumed else {}
    for name in tables:
        if workdir.problem(work / name, recorded.get(name)) is not None:
            shutil.move(planned.path(name), tmp_name(work / name))  # a rename when planning ran on the same disk
            commit(tmp_name(work / name), work / name)
    plan = replace(plan, tables={name: workdir.describe_file(work / name) for name in tables})
    write_json_atomic(plan.to_json(), work / workdir.EMBED_PLAN)
    return plan


def claim(work: Path, plan: workdir.EmbedPlan, planned: planning.Planned, overwrite: bool) -> workdir.EmbedPlan:
    """Refuse a work directory holding another run; with --overwrite, remove it and everything made from it.
    The plan, with its tables' records."""
    with workdir.locked(work):
        changed = workdir.changed_keys(work, "embed", plan, ("model", "settings", "inputs"))
        refusal = (f"{work} holds an embed run made with a different {' and '.join(changed) or 'configuration'}; "
                   "pass --overwrite to start over (it removes everything made from the old run), or use another --work")
        resumed = workdir.claim(work, "embed", plan, replace=overwrite, refusal=refusal)
        if resumed:
            plan = replace(plan, tables=workdir.read_plan(work, "embed").get("tables", {}))
        plan = write_tables(work, plan, planned, resumed)
        workdir.remove_temps(work)
    return plan
