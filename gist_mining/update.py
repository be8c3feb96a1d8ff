"""Mining again after the input grew: an earlier work directory's candidates, kept where they still hold.

    python -m pipeline.mask --work runs/v2 --update-from runs/v1

An anchor's candidates are the k best texts of the pool less its exclusions (its query and every positive of
that query). Texts that join the pool can only push texts out of that list, so the new list is the best k of
the old list and of the new texts. An anchor of the earlier run keeps its list, searched again only against
the texts new to the pool, when its query has the same vector and the same exclusions in both runs and no
text of its list left the pool (else the text after its k-th would belong in it). A text whose vector differs
between the runs counts as left and as new. Every other anchor is searched in full. With an exact index the
lists equal a full search's (the order of exactly tied scores aside); with an approximate one they are the
earlier approximate lists merged with the new texts' (searched exactly while they are few, EXACT_NEW_TEXTS).

The earlier run must share the guide (model fingerprint, prompts, precision, dtype, backend: what makes a
vector) and the search settings that make a list (k, index, include_queries). Its candidates are read through
its manifest, every shard checked, like any other reader's, and split once by this run's shards.
"""

from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.lists import PAD_ID, padded
from gist_mining.mining.index import ADD_BATCH, add_vectors, build_index, set_search_parameters
from gist_mining.mining.search import PoolSearch, merge_candidates
from gist_mining.storage import AtomicParquetWriter
from gist_mining.workdir import VectorStore

GUIDE = ("dtype", "precision", "query_prompt", "document_prompt", "backend")  # embed settings that change a vector
LISTS = ("k", "index", "include_queries")  # search settings that change a list
LIST_COLUMNS = ("query_id", "candidate_ids", "candidate_scores")  # what an earlier list is
LIST_SCHEMA = {"query_id": pl.Int64, "candidate_ids": pl.List(pl.Int64), "candidate_scores": pl.List(pl.Float32)}
OPEN_FILES = 256  # shards written per pass over the earlier candidates: open files stay few
SPLIT_BATCH = 8192  # earlier lists read at a time while splitting (~10 MB at k = 100)
# Below this many new texts they are searched exactly whatever the pool's index: an exact search of them then
# reads fewer vectors per query than an HNSW search (efSearch x M), and IVF-PQ could not train its codebooks
# (39 x 256 points).
EXACT_NEW_TEXTS = 39 * 256


def sorted_exclusions(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.select("query_id", pl.col("exclude_ids").list.sort()).unique("query_id")


def earlier_search(earlier: Path, work: Path) -> str:
    """The fingerprint of the earlier run's search: part of the new search plan's (the lists depend on it)."""
    if Path(earlier).resolve() == Path(work).resolve():
        raise UsageError(f"--update-from {earlier}: that is --work itself; name the earlier work directory")
    return workdir.checked_candidates_manifest(earlier).fingerprint


def checked_files(earlier: Path, work: Path, plan: workdir.SearchPlan) -> list[Path]:
    """The candidate shards of ``earlier``, checked, when they can serve the search ``plan`` of ``work``."""
    manifest = workdir.checked_candidates_manifest(earlier)
    embed, earlier_embed = workdir.checked_embed_manifest(work), workdir.checked_embed_manifest(earlier)
    differ = [name for name in GUIDE if embed.settings.get(name) != earlier_embed.settings.get(name)]
    differ += ["guide model"] * (embed.model["fingerprint"] != earlier_embed.model["fingerprint"])
    differ += ["version (candidates format)"] * (manifest.candidates_format != plan.candidates_format)
    differ += [f"--{name.replace('_', '-')} ({getattr(manifest, name)} there, {getattr(plan, name)} here)"
               for name in LISTS if getattr(manifest, name) != getattr(plan, name)]
    if differ:
        raise UsageError(f"--update-from {earlier}: its candidates were made with another {', '.join(differ)}; "
                         "mine without --update-from")
    return workdir.verified(earlier, manifest, "search")


class EarlierCandidates:
    """The candidates of the earlier run ``plan.update_from`` names (its ``checked_files``) for the search of
    ``work`` under ``plan``."""

    def __init__(self, files: list[Path], work: Path, plan: workdir.SearchPlan, store: VectorStore):
        self.earlier, self.files, self.k, self.kind = Path(plan.update_from["work"]), files, plan.k, plan.index
        try:
            self.store, self.query_store = VectorStore(self.earlier), VectorStore(self.earlier, "query")
        except OSError as err:  # its vectors/ matrix deleted, in a directory this user cannot write
            raise UsageError(f"--update-from {self.earlier}: cannot rebuild {self.earlier / workdir.VECTORS} "
                             f"({err.strerror}); make it writable, or copy it and name the copy") from None
        new_pool = workdir.candidate_pool(work, plan.include_queries)
        old_pool = workdir.candidate_pool(self.earlier, plan.include_queries)
        kept = self._same_vectors(np.intersect1d(new_pool, old_pool), store)
        self.new_texts = new_pool[~np.isin(new_pool, kept)]
        self.gone = np.setdiff1d(old_pool, kept)
        self.exclusions = sorted_exclusions(workdir.anchor_exclusions(self.earlier)[1])
        self.search_new = self._index_new_texts(store, plan.index) if len(self.new_texts) else None
        self.search_fingerprint = plan.update_from["fingerprint"]  # what its index marker names
        self.lists = pl.DataFrame(schema=LIST_SCHEMA)
        self.reused = self.searched = 0

    def _index_new_texts(self, store: VectorStore, kind: str) -> PoolSearch:
        """The new texts in an index of the pool's kind, so that an earlier anchor's search of them never costs more
        than a full search; exact below EXACT_NEW_TEXTS."""
        kind = "flat" if len(self.new_texts) < EXACT_NEW_TEXTS else kind
        vectors = store.view(self.new_texts)
        return PoolSearch(build_index(vectors, kind, self.k), self.new_texts, None if kind == "flat" else vectors, self.k)

    def _same_vectors(self, ids: np.ndarray, store: VectorStore) -> np.ndarray:
        """The ``ids`` whose document vector is the same, bit for bit, in both work directories."""
        same = np.zeros(len(ids), dtype=bool)
        for start in range(0, len(ids), ADD_BATCH):
            part = ids[start: start + ADD_BATCH]
            same[start: start + len(part)] = (store.get(part) == self.store.get(part)).all(axis=1)
        return ids[same]

    def split_by_shard(self, work: Path, plan: workdir.SearchPlan) -> None:
        """The earlier lists each shard of this run asks for, in a file of its own (``workdir.EARLIER``), so that a
        shard reads its lists, not all of them: one pass over the earlier candidates per OPEN_FILES shards. Made
        once per plan, behind a marker, like the index."""
        folder = work / workdir.EARLIER

        def build():
            shutil.rmtree(folder, ignore_errors=True)
            anchors = workdir.read_table(work, workdir.ANCHORS, ["anchor_id", "query_id"])
            need = anchors.select("query_id", (pl.col("anchor_id") // plan.shard_size).alias("shard")).unique()
            schema = pa.schema([pq.read_schema(self.files[0]).field(name) for name in LIST_COLUMNS])
            for first in range(0, plan.anchor_shards, OPEN_FILES):
                self._write_shards(need.filter(pl.col("shard").is_between(first, first + OPEN_FILES - 1)), folder, schema)
            return sorted(folder.glob("*.parquet")), {}

        workdir.build_once(work, work / workdir.EARLIER_MARKER, plan.fingerprint, build)
        pa.default_memory_pool().release_unused()  # the split's buffers, which Arrow's allocator would keep

    def _write_shards(self, need: pl.DataFrame, folder: Path, schema: pa.Schema) -> None:
        """Every earlier list whose query ``need`` names, into the file of each shard it names."""
        with ExitStack() as files:
            writers = {}
            for path in self.files:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=SPLIT_BATCH, columns=list(LIST_COLUMNS)):
                    for (shard,), rows in pl.from_arrow(batch).join(need, on="query_id").group_by("shard"):
                        if shard not in writers:
                            writers[shard] = files.enter_context(
                                AtomicParquetWriter(folder / workdir.shard_name(shard), schema))
                        writers[shard].write(rows.select(LIST_COLUMNS).to_arrow().cast(schema))

    def load(self, anchors: pl.DataFrame, shard: int, work: Path) -> None:
        """The earlier lists of one shard's queries (``anchors`` with ``exclude_ids``) that can still hold."""
        path = work / workdir.EARLIER / workdir.shard_name(shard)
        lists = pl.read_parquet(path).unique("query_id") if path.exists() else pl.DataFrame(schema=LIST_SCHEMA)
        holding_gone = (lists.select("query_id", "candidate_ids").explode("candidate_ids")
                        .join(pl.DataFrame({"candidate_ids": self.gone}), on="candidate_ids", how="semi"))
        self.lists = (lists.join(sorted_exclusions(anchors), on="query_id")
                      .join(self.exclusions, on="query_id", suffix="_earlier")
                      .filter(pl.col("exclude_ids") == pl.col("exclude_ids_earlier"))
                      .join(holding_gone, on="query_id", how="anti")
                      .select(LIST_COLUMNS))

    def extended_index(self, store: VectorStore) -> tuple[faiss.Index, np.ndarray] | None:
        """The earlier run's index (checked against its marker) and pool ids, with the new texts added, when no text
        left its pool (an index cannot drop one) and it is approximate (a flat index is a copy of the vectors)."""
        if len(self.gone) or self.kind == "flat" or not workdir.index_ready(self.earlier, self.search_fingerprint):
            return None
        index_path, ids_path, _ = workdir.index_files(self.earlier)
        index = faiss.read_index(str(index_path))  # a copy, not a mapping: it is added to
        add_vectors(index, store.view(self.new_texts))
        return set_search_parameters(index, self.k), np.concatenate([np.load(ids_path, allow_pickle=False), self.new_texts])

    def find(self, query_ids: np.ndarray, queries: np.ndarray, exclude: np.ndarray,
             search_all: PoolSearch) -> tuple[np.ndarray, np.ndarray]:
        """``search_all``'s answer for a chunk of anchors, from their earlier lists where those hold."""
        rows = pl.DataFrame({"query_id": query_ids}).join(self.lists, on="query_id", how="left", maintain_order="left")
        has_list = np.flatnonzero(rows["candidate_ids"].is_not_null().to_numpy())
        reuse = has_list[(self.query_store.get(query_ids[has_list]) == queries[has_list]).all(axis=1)]
        full = np.setdiff1d(np.arange(len(query_ids)), reuse)
        ids, scores = np.full((len(query_ids), self.k), PAD_ID), np.full((len(query_ids), self.k), -np.inf, np.float32)
        parts = [(full, search_all(queries[full], exclude[full]))] if len(full) else []
        if len(reuse):
            lists = [(padded(rows["candidate_ids"][reuse].to_arrow(), PAD_ID, np.int64),
                      padded(rows["candidate_scores"][reuse].to_arrow(), -np.inf, np.float32))]
            lists += [self.search_new(queries[reuse], exclude[reuse])] if self.search_new else []
            parts.append((reuse, merge_candidates(lists, self.k)))
        for where, (part_ids, part_scores) in parts:
            ids[where, :part_ids.shape[1]], scores[where, :part_scores.shape[1]] = part_ids, part_scores
        self.reused, self.searched = self.reused + len(reuse), self.searched + len(full)
        return ids, scores
