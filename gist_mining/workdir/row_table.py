"""The mined rows as the trainer reads them (``RowTable``): one file of fixed-width records per mined fingerprint and
trainer's share of the lists, with the positions of each row's texts in the text table, read by row (a batch reads
its rows, an epoch's plan a window of rows at a time); nothing per row is held in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining.lists import PAD_ID, padded
from gist_mining.margin import is_unjudged
from gist_mining.storage import config_fingerprint, write_npy_atomic
from gist_mining.workdir.fixed_rows import FixedRows, built_checked
from gist_mining.workdir.layout import MINED
from gist_mining.workdir.readers import checked_mined_manifest, verified
from gist_mining.workdir.records import MinedManifest
from gist_mining.workdir.text_table import TextTable

FORMAT = 2  # in the marker's fingerprint: a table of another layout is built again
PLAN_CHUNK = 16_384  # rows whose records the planner holds at a time


def record_type(documents: int) -> np.dtype:
    """A row's record with room for ``documents`` documents (ids, and positions in the text table; -1 past
    ``n_documents``)."""
    return np.dtype([("anchor_id", np.int64), ("query_id", np.int64), ("positive_id", np.int64),
                     ("query_at", np.int64), ("positive_at", np.int64), ("task", np.int32), ("n_documents", np.int32),
                     ("documents", np.int64, (documents,)), ("documents_at", np.int64, (documents,)),
                     ("known_start", np.int64), ("known_count", np.int64), ("unjudged", np.uint8)])


class RowTable:
    """The mined rows in anchor order, a record each (``mined/rows-nN-fF.npy``):

    - ``anchor_id``, ``query_id``, ``positive_id``; ``task`` as a code into ``task_names`` (sorted);
    - ``documents``: the first ``negatives`` mined negatives, then the first ``false_negatives`` known false
      negatives (``--false-negatives-in-batch``): the row's negatives column, ``n_documents`` of them;
    - ``query_at``, ``positive_at``, ``documents_at``: where those texts are in the text table (``TextTable``), so
      that a batch finds its texts and vectors without a search;
    - ``known_start``, ``known_count``: the row's known false negatives in ``mined/rows-nN-fF-known.npy``:
      mining's, and every other positive of its query (a query repeated with other positives, or several qrels);
    - ``unjudged``: mining left the anchor out of its margin rule (all false where the rules judge every anchor).

    And the row indices sorted by task, stably (GISTEmbed's chunks), in ``mined/rows-nN-fF-by-task.npy``. Built
    once per mined fingerprint and share, behind its marker, by the first reader (the one time every row is in
    memory, as the text table's sort is), built again when its marker names other mined tables, and checked
    against its marker's record (bytes and SHA-256) at every open: one whose bytes changed is refused in one line
    naming the command that rebuilds it."""

    def __init__(self, work: Path, negatives: int, false_negatives: int = 0, texts: TextTable | None = None):
        work = Path(work)
        self.manifest = checked_mined_manifest(work)  # checks the chain embeddings -> candidates -> mined
        self.texts = texts if texts is not None else TextTable(work)  # before the build below takes the work directory's lock: it may build
        name = f"{MINED}/rows-n{negatives}-f{false_negatives}"
        self.path, self.marker = work / f"{name}.npy", work / f"{MINED}/_{name.split('/')[1]}.done"
        known_path, by_task_path = work / f"{name}-known.npy", work / f"{name}-by-task.npy"
        fingerprint = config_fingerprint({"mined": self.manifest.fingerprint, "texts": self.texts.fingerprint,
                                          "negatives": negatives, "false_negatives": false_negatives,
                                          "format": FORMAT})
        record = built_checked(work, self.marker, fingerprint, lambda: self._build(
            work, negatives + false_negatives, (negatives, false_negatives), (known_path, by_task_path)))
        self.task_names, self.task_counts = record["tasks"], np.array(record["task_counts"], dtype=np.int64)
        self.records, self.known, self.by_task = FixedRows(self.path), FixedRows(known_path), FixedRows(by_task_path)

    def __len__(self) -> int:
        return len(self.records)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The records of ``rows`` (any order)."""
        return self.records.read(rows)

    def every(self, *fields: str) -> tuple[np.ndarray, ...]:
        """Each of ``fields`` of every row, in one pass: for the readers that need whole columns."""
        return self.records.columns(*fields)

    def known_of(self, records: np.ndarray) -> np.ndarray:
        """The rows' known false negatives, padded with PAD_ID to the longest."""
        counts = records["known_count"]
        offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
        return padded(pa.LargeListArray.from_arrays(offsets, self.known.read_spans(records["known_start"], counts)),
                      PAD_ID, np.int64)

    def sorted_by_task(self, start: int, stop: int) -> np.ndarray:
        """Rows start .. stop - 1 of the rows sorted by task, stably."""
        return self.by_task.read_spans([start], [stop - start])

    def texts_and_tasks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """What the batch planner reads of ``rows``: each one's texts (query, positive, documents) as their
        positions in the text table, end to end, with each row's count, and its task's code."""
        parts = self._chunks(rows, lambda records: (*documents_of(records, "_at", lead=("query_at", "positive_at")),
                                                    records["task"].copy()))
        return tuple(np.concatenate(column) for column in zip(*parts))

    def tasks_of(self, rows: np.ndarray) -> np.ndarray:
        """The task codes of ``rows``."""
        return np.concatenate(self._chunks(rows, lambda records: records["task"].copy()))

    def _chunks(self, rows: np.ndarray, take) -> list:
        """``take`` of the records of ``rows``, a chunk of rows at a time (a window's records are 10s of MB), each a
        copy: a view of a field would hold its chunk's records."""
        return [take(self.read(rows[start: start + PLAN_CHUNK])) for start in range(0, max(len(rows), 1), PLAN_CHUNK)]

    def _build(self, work: Path, documents: int, share: tuple[int, int], paths: tuple[Path, Path]):
        negatives, false_negatives = share
        manifest: MinedManifest = self.manifest
        judged = manifest.rules.unjudged_rank_min is not None
        columns = ["anchor_id", "query_id", "positive_id", "task", "negative_ids", "false_negative_ids",
                   *(["candidates_above_positive", "n_candidates"] if judged else [])]
        rows = pl.read_parquet(verified(work, manifest, "mine"), columns=columns).sort("anchor_id")
        names = rows["task"].unique().sort().to_list()
        # Every other positive of a repeated query is a known false negative of its rows (masked, not taken as an
        # extra positive: the loss stays GISTEmbed's one-positive cross-entropy). Grouping the repeated ones alone
        # keeps the group table small.
        repeated = rows.select("query_id", "positive_id").filter(pl.col("query_id").is_duplicated())
        positives = repeated.group_by("query_id").agg(pl.col("positive_id").unique().alias("query_positives"))
        others = (pl.col("query_positives").list.set_difference(pl.concat_list("positive_id"))  # not the row's own
                  .fill_null(pl.lit([], dtype=pl.List(pl.Int64))))
        unjudged = is_unjudged(pl.col("candidates_above_positive"), pl.col("n_candidates")) if judged else pl.lit(False)
        table = (rows.join(positives, on="query_id", how="left", maintain_order="left")
                 .select("anchor_id", "query_id", "positive_id",
                         pl.col("task").cast(pl.Enum(names)).to_physical().cast(pl.Int32),
                         pl.concat_list(pl.col("negative_ids").list.head(negatives),
                                        pl.col("false_negative_ids").list.head(false_negatives)).alias("documents"),
                         pl.concat_list("false_negative_ids", others).alias("known"), unjudged.alias("unjudged")))
        records = np.zeros(len(table), record_type(documents))
        for field in ("anchor_id", "query_id", "positive_id", "task", "unjudged"):
            records[field] = table[field].to_numpy()
        counts = table["documents"].list.len().to_numpy()
        records["n_documents"] = counts
        slots = np.arange(documents) < counts[:, None]
        records["documents"], records["documents_at"] = PAD_ID, PAD_ID
        records["documents"][slots] = table["documents"].explode().drop_nulls().to_numpy()
        at = self.texts.positions(np.concatenate([records["query_id"], records["positive_id"],
                                                  records["documents"][slots]]))  # one read of the table's ids
        records["query_at"], records["positive_at"] = at[: len(records)], at[len(records): 2 * len(records)]
        records["documents_at"][slots] = at[2 * len(records):]
        records["known_count"] = table["known"].list.len().to_numpy()
        records["known_start"] = np.cumsum(records["known_count"]) - records["known_count"]
        known_path, by_task_path = paths
        write_npy_atomic(table["known"].explode().drop_nulls().to_numpy().astype(np.int64), known_path)
        write_npy_atomic(np.argsort(records["task"], kind="stable").astype(np.int64), by_task_path)
        write_npy_atomic(records, self.path)
        return [self.path, known_path, by_task_path], {
            "tasks": names, "task_counts": np.bincount(records["task"], minlength=len(names)).tolist()}


def documents_of(records: np.ndarray, suffix: str = "", lead: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """The ``lead`` fields and then the documents (``documents`` + suffix) of each record, end to end, with each
    record's count."""
    wide = np.column_stack([*(records[f][:, None] for f in lead), records[f"documents{suffix}"]])
    counts = len(lead) + records["n_documents"].astype(np.int64)
    return wide[np.arange(wide.shape[1]) < counts[:, None]], counts
