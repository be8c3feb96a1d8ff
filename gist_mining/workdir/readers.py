"""Readers: every one checks the chain (each manifest made from its current parent) and the bytes (each file
against its record) before it reads, and names the command that rebuilds what does not match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from gist_mining.errors import UsageError
from gist_mining.workdir.layout import (
    ANCHORS,
    CANDIDATES_MANIFEST,
    EMBED_MANIFEST,
    MINED_MANIFEST,
    TEXTS,
    TRAINING_RECORD,
    read_record,
    rebuild_command,
)
from gist_mining.workdir.markers import problem
from gist_mining.workdir.records import CandidatesManifest, EmbedManifest, MinedManifest, Sharded


def _manifest(work: Path, name: str, kind, before: str):
    manifest = read_record(Path(work) / name)
    if manifest is None:
        raise UsageError(f"{work}: no {name}; run `{before}` to completion first")
    return kind.from_json(manifest)


def _check_parent(work: Path, name: str, manifest, parent, step: str):
    if manifest.parent_fingerprint != parent.fingerprint:
        raise UsageError(f"{Path(work) / name} is stale: made from {manifest.parent_fingerprint[:12]}, but its "
                         f"parent is now {parent.fingerprint[:12]}; rebuild with `{rebuild_command(work, step)}`")
    return manifest


def checked_embed_manifest(work: Path) -> EmbedManifest:
    """embed_manifest.json; a missing one names the command that makes it."""
    return _manifest(work, EMBED_MANIFEST, EmbedManifest, rebuild_command(work, "embed"))


def checked_candidates_manifest(work: Path) -> CandidatesManifest:
    """candidates_manifest.json, checked to be made from the current embeddings."""
    manifest = _manifest(work, CANDIDATES_MANIFEST, CandidatesManifest, f"python -m pipeline.mask --work {work}")
    return _check_parent(work, CANDIDATES_MANIFEST, manifest, checked_embed_manifest(work), "search")


def checked_mined_manifest(work: Path) -> MinedManifest:
    """mined_manifest.json, checked along the chain: embeddings -> candidates -> mined; its rules a MiningRules."""
    manifest = _manifest(work, MINED_MANIFEST, MinedManifest, f"python -m pipeline.mask --work {work}")
    return _check_parent(work, MINED_MANIFEST, manifest, checked_candidates_manifest(work), "mine")


def checked_file(path: Path, record: dict | None, rebuild: str) -> Path:
    """``path`` when it matches its record (rows, bytes, SHA-256); else one line naming the file, what is wrong
    and ``rebuild``, the command that rebuilds it. Every reader's check of a file goes through here."""
    wrong = problem(path, record)
    if wrong:
        raise UsageError(f"{path}: {wrong}; rebuild it with `{rebuild}`")
    return path


def verified(work: Path, manifest: Sharded, step: str) -> list[Path]:
    """The manifest's shard files, each checked against the manifest (bytes and SHA-256) before it is read."""
    return [checked_file(Path(work) / record["file"], record, rebuild_command(work, step)) for record in manifest.shards]


def verified_table(work: Path, name: str) -> Path:
    """The path of texts.parquet or anchors.parquet, checked against the embed manifest."""
    return checked_file(Path(work) / name, checked_embed_manifest(work).tables[name], rebuild_command(work, "embed"))


def read_table(work: Path, name: str, columns: list[str] | None = None) -> pl.DataFrame:
    """texts.parquet or anchors.parquet, checked against the embed manifest first."""
    return pl.read_parquet(verified_table(work, name), columns=columns)


def anchor_exclusions(work: Path) -> tuple[Path, pl.DataFrame]:
    """anchors.parquet (checked) and, per query, the ids its search must skip: itself and all its positives."""
    path = verified_table(work, ANCHORS)
    pairs = pl.read_parquet(path, columns=["query_id", "positive_id"])
    positives = pairs.group_by("query_id").agg(pl.col("positive_id").unique().alias("positives"))
    return path, positives.select("query_id", pl.concat_list("query_id", "positives").alias("exclude_ids"))


def read_anchors(path: Path, exclusions: pl.DataFrame, start: int, length: int) -> pl.DataFrame:
    """Anchors start .. start + length of anchors.parquet at ``path`` (anchor_id is the row number: pipeline.embed
    writes them in order) with their ``anchor_exclusions``, read without the rest."""
    part = pl.scan_parquet(path).slice(start, length).collect()
    return part.join(exclusions, on="query_id", how="left", maintain_order="left")


def candidate_pool(work: Path, include_queries: bool) -> np.ndarray:
    """The text ids the search ranks, in texts.parquet's order: the documents, and the queries too if asked."""
    texts = read_table(work, TEXTS, ["text_id", "is_query", "is_document"])
    keep = pl.col("is_document") | pl.col("is_query") if include_queries else pl.col("is_document")
    return texts.filter(keep).get_column("text_id").to_numpy()


def read_texts(work: Path, ids: np.ndarray) -> pl.DataFrame:
    """text_id and text of the distinct ``ids``, sorted by text_id, from texts.parquet (checked against the embed
    manifest first); the table is streamed through the filter, so memory holds the asked texts, not the pool."""
    found = (pl.scan_parquet(verified_table(work, TEXTS)).select("text_id", "text")
             .filter(pl.col("text_id").is_in(pl.Series(ids).implode())).sort("text_id").collect(engine="streaming"))
    if len(found) != len(ids):
        raise UsageError(f"{Path(work) / TEXTS}: {len(ids) - len(found)} text ids of the mined tables are missing; "
                         f"rebuild it with `{rebuild_command(work, 'embed')}`")
    return found


def trained_from(model_dir: Path) -> str | None:
    """The mined manifest fingerprint a trained model records (None: not a model of this project)."""
    return (read_record(Path(model_dir) / TRAINING_RECORD) or {}).get("mined_fingerprint")
