"""The state of a work directory: every path, plan, fingerprint, completion marker and check, in one place.

A work directory is a chain of steps, each made from the one before it:

    inputs -embed->  texts.parquet, anchors.parquet, embeddings/   embed_plan.json -> embed_manifest.json
           -search-> vectors/, index/, candidates/                 search_plan.json -> candidates_manifest.json
           -mine-->  mined/, mined_summary.json                    mine_plan.json  -> mined_manifest.json
           -train->  models/NAME (gist_training.json names the mined manifest it was trained from)

A step is a small function over shards (datatrove style); which process does which shards is the
executor's business (``gist_mining.executor``). A step's plan holds its fingerprint (its settings and
its parent's fingerprint); a shard is done when its marker ``_shard-NNNNN.done`` names that fingerprint
and the shard's rows, bytes and SHA-256. A resumed run verifies every done shard against its marker; the
process that finds all shards done writes the manifest; a reader checks the manifest's parent against the
current parent and every shard against the manifest before it reads it. Whatever does not match is named
with the command that rebuilds it, and rebuilt by that command, never read.

Every table of the chain names a text by its ``text_id``: a fingerprint of its content (``ids.text_id``).

The package's modules, each one concern: ``layout`` (names, plans, rebuild commands), ``claims`` (locks and
claims), ``records`` (the typed plans and manifests, and their JSON), ``markers`` (shards, build-once files, checks
against records), ``readers`` (chain-checked readers), ``vectors`` (the vector store), ``fixed_rows`` (tables of
fixed-width records, read by row), ``text_table`` (the texts by position), ``row_table`` (the mined rows as the
trainer reads them), ``ids`` (text ids). Their
names are this package's: ``workdir.NAME``.
"""

from __future__ import annotations

from gist_mining.workdir.claims import claim, locked, remove_steps, remove_temps
from gist_mining.workdir.fixed_rows import FixedRows
from gist_mining.workdir.ids import text_id, text_ids
from gist_mining.workdir.layout import (
                                        ANCHORS,
                                        CANDIDATES,
                                        CANDIDATES_MANIFEST,
                                        CHECKPOINT_GLOB,
                                        CHECKPOINTS,
                                        EARLIER,
                                        EARLIER_MARKER,
                                        EMBED_MANIFEST,
                                        EMBED_PLAN,
                                        EMBEDDINGS,
                                        FN_FRONTIER,
                                        FOLDERS,
                                        INDEX,
                                        INDEX_FILE,
                                        INDEX_MARKER,
                                        LOCK,
                                        METRICS,
                                        MINE_PLAN,
                                        MINED,
                                        MINED_MANIFEST,
                                        MODELS,
                                        POOL_IDS,
                                        POSITION,
                                        REPORT,
                                        RESULTS,
                                        SEARCH_PLAN,
                                        SKIPPED,
                                        STEPS,
                                        SUMMARY,
                                        TEXT_BYTES,
                                        TEXT_TABLE,
                                        TEXT_TABLE_MARKER,
                                        TEXTS,
                                        TRAINER_STATE,
                                        TRAINING_RECORD,
                                        TRUTH,
                                        VECTORS,
                                        changed_keys,
                                        checkpoint_name,
                                        index_files,
                                        read_plan,
                                        read_record,
                                        rebuild_command,
                                        shard_name,
)
from gist_mining.workdir.markers import Shards, build_once, built, describe_file, index_ready, problem
from gist_mining.workdir.readers import (
                                        anchor_exclusions,
                                        candidate_pool,
                                        checked_candidates_manifest,
                                        checked_embed_manifest,
                                        checked_file,
                                        checked_mined_manifest,
                                        read_anchors,
                                        read_table,
                                        read_texts,
                                        trained_from,
                                        verified,
                                        verified_table,
)
from gist_mining.workdir.records import (
                                        CandidatesManifest,
                                        EmbedManifest,
                                        EmbedPlan,
                                        MinedManifest,
                                        MinePlan,
                                        SearchPlan,
                                        TrainingRecord,
)
from gist_mining.workdir.row_table import RowTable, documents_of
from gist_mining.workdir.text_table import TextTable
from gist_mining.workdir.vectors import (
                                        QUERY_COLUMN,
                                        StoredRows,
                                        VectorStore,
                                        load_embeddings,
                                        read_shard,
                                        role_column,
                                        shard_arrays,
                                        two_roles,
)
