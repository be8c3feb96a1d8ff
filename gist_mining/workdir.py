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

Every table of the chain names a text by its ``text_id``: a fingerprint of its content (``text_id`` below).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from gist_mining.errors import UsageError
from gist_mining.storage import commit, file_sha256, read_json, remove_stale_temps, tmp_name, write_json_atomic

TEXTS, ANCHORS, EMBEDDINGS = "texts.parquet", "anchors.parquet", "embeddings"
EMBED_PLAN, EMBED_MANIFEST = "embed_plan.json", "embed_manifest.json"
VECTORS, INDEX, CANDIDATES = "vectors", "index", "candidates"
SEARCH_PLAN, CANDIDATES_MANIFEST = "search_plan.json", "candidates_manifest.json"
MINED, MINE_PLAN, MINED_MANIFEST, SUMMARY = "mined", "mine_plan.json", "mined_manifest.json", "mined_summary.json"
INDEX_FILE, POOL_IDS, INDEX_MARKER = f"{INDEX}/index.faiss", f"{INDEX}/pool_ids.npy", f"{INDEX}/_index.done"
# pipeline.mask --update-from: the earlier run's lists that each shard asks for, one file per shard (gist_mining.update)
EARLIER, EARLIER_MARKER = f"{INDEX}/earlier", f"{INDEX}/_earlier.done"
REPORT, MODELS, RESULTS = "report", "models", "results.json"
# Known false negatives of the pairs (an input, like them; gist_mining.fn_quality), and their plot in the report.
TRUTH, FN_FRONTIER = "fn_truth.parquet", f"{REPORT}/fn_frontier.png"
# Inside a trained model's folder (train.run --out):
TRAINING_RECORD, METRICS, CHECKPOINTS = "gist_training.json", "metrics.jsonl", "checkpoints"
POSITION, TRAINER_STATE = "position.json", "trainer_state.pt"  # inside each checkpoint
CHECKPOINT_GLOB = "step-*"
LOCK = ".lock"

# What each step owns, in chain order: removing a step removes every later one with it.
STEPS = {
    "embed": (EMBED_PLAN, TEXTS, ANCHORS, EMBEDDINGS, EMBED_MANIFEST),
    "search": (SEARCH_PLAN, VECTORS, INDEX, CANDIDATES, CANDIDATES_MANIFEST),
    "mine": (MINE_PLAN, MINED, MINED_MANIFEST, SUMMARY, REPORT),
    "train": (MODELS, RESULTS),
}
FOLDERS = (EMBEDDINGS, VECTORS, INDEX, CANDIDATES, MINED)


def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"  # zero-padded: names sort by step


def rebuild_command(work: Path, step: str) -> str:
    if step == "embed":  # the command that made the plan, with its inputs
        return (read_plan(work, "embed") or {}).get("command", f"python -m pipeline.embed --work {work} --input ...")
    return {"search": f"python -m pipeline.mask --work {work} --overwrite",
            "mine": f"python -m pipeline.mask --work {work} --refilter"}[step]


def index_files(work: Path) -> tuple[Path, Path, Path]:
    """The search's index, its pool ids and its marker."""
    return Path(work) / INDEX_FILE, Path(work) / POOL_IDS, Path(work) / INDEX_MARKER


def index_ready(work: Path, fingerprint: str) -> bool:
    """The index of ``work`` is there for the search plan ``fingerprint``: its marker names the plan, and the index
    and pool ids match the marker."""
    return built(Path(work), Path(work) / INDEX_MARKER, fingerprint) is not None


def built(work: Path, marker: Path, fingerprint: str, verify: bool = True) -> dict | None:
    """The record of files built once behind ``marker`` (``build_once``) when it names ``fingerprint`` and every
    file it lists matches it (its bytes, and with ``verify`` its SHA-256); None otherwise."""
    record = read_record(marker) or {}
    files = record.get("files")
    if record.get("fingerprint") != fingerprint or files is None:
        return None
    return None if any(problem(Path(work) / name, file, verify) for name, file in files.items()) else record


def build_once(work: Path, marker: Path, fingerprint: str, build, verify: bool = True) -> dict:
    """Files made once per ``fingerprint`` behind ``marker``, whichever process or resumed run asks first (the
    index, the earlier run's lists per shard, the vector matrix; a shared cache's folder:
    ``models.build_folder_once``).
    Fresh: the marker's record, read without the lock (a work directory this user cannot write is read as it
    is). Else, under the lock: the marker goes first, ``build()`` writes the files, each atomically, and returns
    them with what else the record holds; the marker, written last, lists each file's bytes (and SHA-256 with
    ``verify``: without it a resumed run compares sizes only, for files too large to hash at every start)."""
    record = built(work, marker, fingerprint, verify)
    if record is not None:
        return record
    with locked(work):
        record = built(work, marker, fingerprint, verify)  # another process may have built it meanwhile
        if record is None:
            marker.unlink(missing_ok=True)
            files, extra = build()
            record = {"fingerprint": fingerprint, **extra, "files": {
                str(f.relative_to(work)): {"bytes": f.stat().st_size, **({"sha256": file_sha256(f)} if verify else {})}
                for f in files}}
            write_json_atomic(record, marker)
    return record


def read_record(path: Path) -> dict | None:
    """A JSON plan, marker or manifest; None when it is missing or cannot be read (cut short by a kill)."""
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


# -- text ids: stable 64-bit ids derived from content (the same text gets the same id in every run) --------


def text_id(text: str) -> int:
    """The first 8 bytes of BLAKE2b over the UTF-8 text, as a signed int64 (FAISS and Arrow's native id type)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def text_ids(texts) -> np.ndarray:
    return np.fromiter((text_id(t) for t in texts), dtype=np.int64, count=len(texts))


# -- claims: whose plan a work directory holds ----------------------------------------------------------


@contextmanager
def locked(work: Path):
    """One process at a time claims plans and builds shared files (shard processes start together)."""
    Path(work).mkdir(parents=True, exist_ok=True)
    with open(Path(work) / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def remove_steps(work: Path, first: str, last: str | None = None, keep: tuple[str, ...] = ()) -> None:
    """Delete what steps ``first`` .. ``last`` (default: the end of the chain) own, but the names in ``keep``."""
    names = list(STEPS)
    for step in names[names.index(first): names.index(last or names[-1]) + 1]:
        for name in (n for n in STEPS[step] if n not in keep):
            path = Path(work) / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def anchor_shard_count(search_plan: dict) -> int:
    """How many shards candidates/ and mined/ have: the search plan's anchors in shards of its shard size."""
    return -(-search_plan["n_anchors"] // search_plan["shard_size"])


def claim(work: Path, step: str, plan: dict, *, replace: bool, refusal: str) -> bool:
    """Make ``plan`` (with its ``fingerprint``) the plan of ``step``; True when it resumes an equal plan.

    No readable plan: whatever the step and later steps hold comes from an unfinished or unknown run and is
    removed. Another plan: ``refusal`` is raised, unless ``replace``, which removes the step and every
    later one (the old state's descendants) first. Call under ``locked(work)``.
    """
    path = Path(work) / STEPS[step][0]
    old = read_plan(work, step)
    if old is not None and old["fingerprint"] == plan["fingerprint"]:
        return True
    if old is not None and not replace:
        raise UsageError(refusal)
    remove_steps(work, step)
    write_json_atomic(plan, path)
    return False


def read_plan(work: Path, step: str) -> dict | None:
    """The step's plan, or None when there is none or it cannot be read (a run killed while claiming)."""
    path = Path(work) / STEPS[step][0]
    return read_record(path)


def changed_keys(work: Path, step: str, plan: dict, keys) -> list[str]:
    old = read_plan(work, step) or {}
    return [k for k in keys if old.get(k) != plan.get(k)]


def remove_temps(work: Path) -> None:
    for folder in (Path(work), *(Path(work) / f for f in FOLDERS)):
        remove_stale_temps(folder)


# -- shards and markers ---------------------------------------------------------------------------------


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def describe_file(path: Path) -> dict:
    return {"rows": pq.read_metadata(path).num_rows, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def problem(path: Path, record: dict | None, verify: bool = True) -> str | None:
    """What is wrong with ``path`` against its record (rows, bytes, sha256); None when it matches."""
    if record is None:
        return "no completion marker"
    if not path.is_file():
        return "missing"
    if path.stat().st_size != record["bytes"]:
        return f"truncated or changed ({path.stat().st_size} bytes, expected {record['bytes']})"
    if verify and file_sha256(path) != record["sha256"]:
        return "corrupt (SHA-256 differs from its completion marker)"
    return None


class Shards:
    """One step's sharded output: ``folder/shard-NNNNN.parquet``, each done when its marker says so."""

    def __init__(self, work: Path, folder: str, n_shards: int, fingerprint: str):
        self.work, self.folder, self.n, self.fingerprint = Path(work), folder, n_shards, fingerprint

    def path(self, i: int) -> Path:
        return self.work / self.folder / shard_name(i)

    def marker(self, i: int) -> Path:
        # A leading underscore keeps pyarrow.dataset and Spark-style readers from taking markers for data.
        return self.work / self.folder / f"_{shard_name(i).removesuffix('.parquet')}.done"

    def record(self, i: int) -> dict | None:
        """The marker's record when it is readable and names this step's fingerprint."""
        record = read_record(self.marker(i))
        return record if record is not None and record.get("fingerprint") == self.fingerprint else None

    def pending(self, indices: list[int], verify: bool = True) -> list[int]:
        """The shards among ``indices`` to (re)do: no valid marker, or a shard that does not match it."""
        todo = []
        for i in indices:
            marker = self.marker(i)
            wrong = problem(self.path(i), self.record(i), verify)
            if wrong is not None:
                if marker.exists() and read_record(marker) is None:
                    print(f"{marker}: unreadable (truncated?); rebuilding {self.path(i).name}", file=sys.stderr)
                elif marker.exists() or self.path(i).exists():
                    print(f"{self.path(i)}: {wrong}; rebuilding it", file=sys.stderr)
                self.marker(i).unlink(missing_ok=True)
                todo.append(i)
        return todo

    def mark_done(self, i: int) -> None:
        """Written after the shard itself: a shard without a marker is redone, never trusted."""
        write_json_atomic({"fingerprint": self.fingerprint, **describe_file(self.path(i))}, self.marker(i))

    def complete(self) -> bool:
        """Every shard done (markers and sizes; the bytes were verified when each was written or resumed)."""
        return all(problem(self.path(i), self.record(i), verify=False) is None for i in range(self.n))

    def finish(self, manifest: str, contents: dict) -> dict | None:
        """The step's manifest, written once every shard is done; None while some are not."""
        if not self.complete():
            return None
        records = [self.record(i) for i in range(self.n)]
        shards = [{"file": f"{self.folder}/{shard_name(i)}", **{k: r[k] for k in ("rows", "bytes", "sha256")}}
                  for i, r in enumerate(records)]
        out = {**contents, "fingerprint": self.fingerprint, "shards": shards}
        write_json_atomic(out, self.work / manifest)
        return out


# -- readers: every one checks the chain and the bytes --------------------------------------------------


def _manifest(work: Path, name: str, before: str) -> dict:
    manifest = read_record(Path(work) / name)
    if manifest is None:
        raise UsageError(f"{work}: no {name}; run `{before}` to completion first")
    return manifest


def _check_parent(work: Path, name: str, manifest: dict, parent: dict, step: str) -> dict:
    if manifest["parent_fingerprint"] != parent["fingerprint"]:
        raise UsageError(f"{Path(work) / name} is stale: made from {manifest['parent_fingerprint'][:12]}, but its "
                         f"parent is now {parent['fingerprint'][:12]}; rebuild with `{rebuild_command(work, step)}`")
    return manifest


def checked_embed_manifest(work: Path) -> dict:
    """embed_manifest.json; a missing one names the command that makes it."""
    return _manifest(work, EMBED_MANIFEST, rebuild_command(work, "embed"))


def checked_candidates_manifest(work: Path) -> dict:
    """candidates_manifest.json, checked to be made from the current embeddings."""
    manifest = _manifest(work, CANDIDATES_MANIFEST, f"python -m pipeline.mask --work {work}")
    return _check_parent(work, CANDIDATES_MANIFEST, manifest, checked_embed_manifest(work), "search")


def checked_mined_manifest(work: Path) -> dict:
    """mined_manifest.json, checked along the chain: embeddings -> candidates -> mined."""
    manifest = _manifest(work, MINED_MANIFEST, f"python -m pipeline.mask --work {work}")
    return _check_parent(work, MINED_MANIFEST, manifest, checked_candidates_manifest(work), "mine")


def verified(work: Path, manifest: dict, step: str) -> list[Path]:
    """The manifest's shard files, each checked against the manifest (bytes and SHA-256) before it is read."""
    files = []
    for record in manifest["shards"]:
        path = Path(work) / record["file"]
        wrong = problem(path, record)
        if wrong:
            raise UsageError(f"{path}: {wrong}; rebuild it with `{rebuild_command(work, step)}`")
        files.append(path)
    return files


def verified_table(work: Path, name: str) -> Path:
    """The path of texts.parquet or anchors.parquet, checked against the embed manifest."""
    path = Path(work) / name
    wrong = problem(path, checked_embed_manifest(work)["tables"][name])
    if wrong:
        raise UsageError(f"{path}: {wrong}; rebuild it with `{rebuild_command(work, 'embed')}`")
    return path


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
    record = Path(model_dir) / TRAINING_RECORD
    return (read_record(record) or {}).get("mined_fingerprint")


# -- the guide's vectors as one matrix on disk ----------------------------------------------------------


# The embedding shards' vector columns: see role_column.
QUERY_COLUMN = "query_embedding"


def two_roles(settings: dict) -> bool:
    """Whether the embed settings' query prompt differs from the document prompt (each role then has vectors)."""
    return settings.get("query_prompt", "") != settings.get("document_prompt", "")


def role_column(settings: dict, role: str) -> str:
    """The embedding shards' column holding a role's vectors. ``embedding`` holds every text in the document
    role (the only role when the two prompts are equal: each text embedded once); when the query prompt
    differs, ``query_embedding`` holds the queries in the query role (null for texts that are not queries).
    Every text has a document-role vector, so that ``pipeline.mask --include-queries`` can search queries as
    documents."""
    return QUERY_COLUMN if role == "query" and two_roles(settings) else "embedding"


def read_shard(path: Path, column: str = "embedding", dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """One embedding shard's text ids and vectors in ``column`` (as ``dtype``), less its null rows."""
    return shard_arrays(pl.read_parquet(path, columns=["text_id", column]), column, dtype)


def shard_arrays(frame: pl.DataFrame, column: str = "embedding", dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """An embedding table's text ids and vectors in ``column`` (less its null rows) as arrays, the vectors as
    ``dtype``. Read with Polars: its Parquet reader decodes a fixed-size list column 3.6x faster than pyarrow's
    (40k x 768 floats: 0.49 s vs 1.76 s) and hands the vectors over as one matrix."""
    frame = frame.filter(pl.col(column).is_not_null())
    vectors = frame[column].to_numpy()
    return frame["text_id"].to_numpy(), vectors.astype(dtype, copy=False)


def load_embeddings(work: Path, role: str = "document") -> tuple[np.ndarray, np.ndarray]:
    """All text ids and their guide embeddings in ``role`` (float32, rows L2-normalised), in shard order: every
    text in the document role, the queries in the query role."""
    manifest = checked_embed_manifest(work)
    column = role_column(manifest["settings"], role)
    shards = [read_shard(p, column) for p in verified(work, manifest, "embed")]
    return np.concatenate([i for i, _ in shards]), np.concatenate([v for _, v in shards])


class VectorStore:
    """Guide embeddings in one role ("query" or "document") looked up by text_id, from one matrix on disk
    built once from the shards; when the two roles' prompts are equal, both roles read the same matrix.

    The matrix keeps the shards' dtype (float16 with ``pipeline.embed --dtype float16``: half the disk and
    page cache); lookups return float32. Lookups read just the asked rows from the file, so memory holds what
    a chunk needs, never the pool.
    """

    def __init__(self, work: Path, role: str = "document"):
        manifest = checked_embed_manifest(work)
        self.column = role_column(manifest["settings"], role)
        prefix = "" if self.column == "embedding" else "query_"
        folder = Path(work) / VECTORS
        self.path, ids_path = folder / f"{prefix}matrix.npy", folder / f"{prefix}ids.npy"
        marker = folder / f"_{prefix}matrix.done"
        # Sizes only: hashing an 8 GB matrix at every start would cost more than the search of a shard.
        build_once(work, marker, manifest["fingerprint"], lambda: self._build(work, manifest, ids_path), verify=False)
        ids = np.load(ids_path, allow_pickle=False)
        self.sorter = np.argsort(ids, kind="stable")
        self.sorted_ids = ids[self.sorter]
        with open(self.path, "rb") as fh:
            np.lib.format.read_magic(fh)
            shape, _, self.dtype = np.lib.format.read_array_header_1_0(fh)
            self.offset, self.dimension = fh.tell(), shape[1]

    def _build(self, work: Path, manifest: dict, ids_path: Path) -> tuple[list[Path], dict]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        total = (manifest["counts"]["queries"] if self.column == QUERY_COLUMN
                 else sum(s["rows"] for s in manifest["shards"]))
        tmp, dtype = tmp_name(self.path), np.dtype(manifest["dtype"])
        ids = []
        # Written through the file, not a memory map: a map's written pages would count in RSS until it closes.
        with open(tmp, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (total, manifest["dimension"])})
            for path in verified(work, manifest, "embed"):
                shard_ids, vectors = read_shard(path, self.column, dtype)
                fh.write(np.ascontiguousarray(vectors).data)
                ids.append(shard_ids)
        write_npy_atomic(np.concatenate(ids), ids_path)
        commit(tmp, self.path)
        return [self.path, ids_path], {}

    def rows(self, ids: np.ndarray) -> np.ndarray:
        positions = np.searchsorted(self.sorted_ids, ids)
        positions = np.minimum(positions, len(self.sorted_ids) - 1)
        if not np.array_equal(self.sorted_ids[positions], ids):
            raise UsageError("a text_id has no embedding: the work directory is incomplete or mixed")
        return self.sorter[positions]

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        rows, where = np.unique(self.rows(ids.reshape(-1)), return_inverse=True)
        return self._read(rows)[where].astype(np.float32).reshape(*ids.shape, self.dimension)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Sorted distinct rows, one read per run of consecutive rows. Read, not memory-mapped: mapped pages
        count in RSS, and the kernel maps cached neighbours of each touched page too (fault-around), so
        scattered rows of a mapped 8 GB matrix would soon hold all of it."""
        out = np.empty((len(rows), self.dimension), dtype=self.dtype)
        if not len(rows):
            return out  # (a memoryview cannot be cast over no bytes)
        buffer, size = memoryview(out).cast("B"), self.dimension * self.dtype.itemsize
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        with open(self.path, "rb", buffering=0) as fh:
            for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)]):
                done, offset = start * size, self.offset + int(rows[start]) * size - start * size
                while done < stop * size:  # a read may return less than asked (Linux: at most ~2 GB)
                    got = os.preadv(fh.fileno(), [buffer[done: stop * size]], offset + done)
                    if got == 0:
                        raise UsageError(f"{self.path}: shorter than its header says; delete it to rebuild it")
                    done += got
        return out

    def view(self, ids: np.ndarray) -> "StoredRows":
        return StoredRows(self, ids)


class StoredRows:
    """The vectors of ``ids`` (in that order), indexed like an (n, d) array but read from the store on demand:
    ``rows[5:10]``, ``rows[index_positions]`` (any shape) give float32 copies of just those rows."""

    def __init__(self, store: VectorStore, ids: np.ndarray):
        self.store, self.ids = store, ids
        self.shape = (len(ids), store.dimension)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, positions) -> np.ndarray:
        return self.store.get(self.ids[positions])


def write_npy_atomic(array: np.ndarray, path: Path) -> None:
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    commit(tmp, path)
