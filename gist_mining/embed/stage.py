"""Stage 1, ``embed``: every distinct text of the inputs once with the guide, into Parquet shards (texts.parquet,
anchors.parquet, embeddings/, embed_manifest.json). Planned in a scratch folder, then claimed, then run shard by
shard through an executor."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gist_mining import cli, onnx_backend, planning, workdir
from gist_mining.embed.plan import claim, make_plan
from gist_mining.embed.settings import EmbedOptions, InputOptions
from gist_mining.embed.step import EmbedStep, prepare_model
from gist_mining.embed_cache import default_root
from gist_mining.errors import UsageError
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.inputs import parse_columns
from gist_mining.models import DEFAULT_GUIDE, ModelSettings, Prompts, resolve_model, role_prompts
from gist_mining.settings import to_argv
from gist_mining.workdir import two_roles


def finish(shards: workdir.Shards, plan: workdir.EmbedPlan, started: float) -> workdir.EmbedManifest | None:
    """The manifest once every shard is done (None before)."""
    manifest = shards.finish(workdir.EMBED_MANIFEST, workdir.EmbedManifest, plan.to_json())
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
                                                reading.instructions, reading.skip_bad_rows)
        model = prepare_model(guide, options.precision)
        resolved = role_prompts(model, prompts)
        backend, encoder = onnx_backend.pick_backend(options.backend, model, resolve_model(guide.name, guide.revision),
                                                     list(resolved.values()), options.precision, options.token_budget,
                                                     guide.name)
        command = cli.command("pipeline.embed", [*(a for p in inputs for a in ("--input", p)),
                                                 *(a for p in corpus for a in ("--corpus", p)), "--work", work,
                                                 *to_argv(reading), "--guide", guide.name, *to_argv(guide),
                                                 *to_argv(prompts), *to_argv(replace(options, overwrite=False))])
        counts = dict(planned.counts, skipped_rows=sum(planned.skipped.values())) if reading.skip_bad_rows else planned.counts
        plan = make_plan(guide, model, options, resolved, backend, counts, records, command)
        plan = claim(work, plan, planned, options.overwrite)
    shards = workdir.Shards(work, workdir.EMBEDDINGS, len(plan.bounds), plan.fingerprint)
    print(f"embed: {plan.counts['texts']} distinct texts from {plan.counts['anchors']} anchors "
          f"({planned.dropped} given negatives dropped: equal to the query or one of its positives, or repeated)",
          file=sys.stderr)
    if planned.skipped:
        print(f"embed: {sum(planned.skipped.values())} bad input rows skipped "
              f"({', '.join(f'{source}: {n}' for source, n in planned.skipped.items())}), each with its reason in "
              f"{work / workdir.SKIPPED}", file=sys.stderr)
    if two_roles(plan.settings):
        print(f"embed: query prompt {plan.settings['query_prompt']!r}, document prompt "
              f"{plan.settings['document_prompt']!r}: every text in the document role, the queries in the query "
              "role too", file=sys.stderr)
    step = EmbedStep(shards, plan, guide, options.encode_batch_size, options.token_budget,
                     None if options.no_cache else options.cache_dir or default_root(), loaded=encoder)
    run_step(step, executor)
    return finish(shards, plan, started)
