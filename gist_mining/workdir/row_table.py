"""The mined rows as the trainer reads them (``RowTable``): one uncompressed Arrow IPC file per mined fingerprint and
trainer's share of the lists, memory-mapped, so that a batch's rows are a take and an epoch's plan reads a window of
rows at a time; nothing per row is copied into memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from gist_mining.margin import is_unjudged
from gist_mining.storage import config_fingerprint
from gist_mining.workdir.layout import MINED
from gist_mining.workdir.mapped import mapped_once, write_one_batch
from gist_mining.workdir.readers import checked_mined_manifest, verified
from gist_mining.workdir.records import MinedManifest

IDS = pa.large_list(pa.int64())  # 64-bit offsets: a billion rows of lists fit
SCHEMA = pa.schema([("anchor_id", pa.int64()), ("query_id", pa.int64()), ("positive_id", pa.int64()),
                    ("task", pa.int32()), ("documents", IDS), ("known", IDS), ("texts", IDS), ("unjudged", pa.uint8()),
                    ("by_task", pa.int64())])
FORMAT = 1  # in the marker's fingerprint: a table of another layout is built again
TASKS = b"tasks"  # schema metadata: the task names, in the order of their codes (sorted)


def _views(lists: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A list column's offsets and values as numpy views of the map."""
    return lists.offsets.to_numpy(), lists.values.to_numpy()


class RowTable:
    """The mined rows in anchor order, with what the trainer reads of each (``mined/rows-nN-fF.arrow``):

    - ``anchor_id``, ``query_id``, ``positive_id``; ``task`` as a code into ``task_names`` (sorted);
    - ``documents``: the first ``negatives`` mined negatives, then the first ``false_negatives`` known false
      negatives (``--false-negatives-in-batch``): the row's negatives column;
    - ``known``: the row's known false negatives: mining's, and every other positive of its query (a query
      repeated with other positives, or with several qrels);
    - ``texts``: query, positive and documents, for the batch planner;
    - ``unjudged``: mining left the anchor out of its margin rule (all false where the rules judge every anchor);
    - ``by_task``: row indices sorted by task, stably (GISTEmbed's chunks).

    Built once per mined fingerprint and share, behind its marker, by the first reader (the one time every row is
    in memory, as the text table's sort is), built again when its marker names other mined tables, and checked
    against its marker's record (size and SHA-256) at every open: one whose bytes changed is refused in one line
    naming the command that rebuilds it."""

    def __init__(self, work: Path, negatives: int, false_negatives: int = 0):
        work = Path(work)
        self.manifest = checked_mined_manifest(work)  # checks the chain embeddings -> candidates -> mined
        name = f"{MINED}/rows-n{negatives}-f{false_negatives}"
        self.path, self.marker = work / f"{name}.arrow", work / f"{MINED}/_{name.split('/')[1]}.done"
        fingerprint = config_fingerprint({"mined": self.manifest.fingerprint, "negatives": negatives,
                                          "false_negatives": false_negatives, "format": FORMAT})
        self.mapped = mapped_once(work, self.path, self.marker, fingerprint,
                                  lambda: self._build(work, self.manifest, negatives, false_negatives), SCHEMA)
        self.task_names = json.loads(self.mapped.metadata[TASKS])
        column = {name: self.mapped.batch.column(name) for name in SCHEMA.names}
        self.anchor_ids, self.query_ids, self.positive_ids, self.tasks, self.by_task = (
            column[c].to_numpy() for c in ("anchor_id", "query_id", "positive_id", "task", "by_task"))
        self.unjudged = column["unjudged"].to_numpy().view(bool)
        self.documents, self.texts = _views(column["documents"]), _views(column["texts"])
        self.known = column["known"]  # an Arrow list column: a batch takes its rows (training.data)

    def __len__(self) -> int:
        return len(self.anchor_ids)

    def _build(self, work: Path, manifest: MinedManifest, negatives: int, false_negatives: int):
        judged = manifest.rules.unjudged_rank_min is not None
        columns = ["anchor_id", "query_id", "positive_id", "task", "negative_ids", "false_negative_ids",
                   *(["candidates_above_positive", "n_candidates"] if judged else [])]
        rows = pl.read_parquet(verified(work, manifest, "mine"), columns=columns).sort("anchor_id")
        names = rows["task"].unique().sort().to_list()
        documents = pl.concat_list(pl.col("negative_ids").list.head(negatives),
                                   pl.col("false_negative_ids").list.head(false_negatives))
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
                         documents.alias("documents"), pl.concat_list("false_negative_ids", others).alias("known"),
                         pl.concat_list("query_id", "positive_id", documents).alias("texts"),
                         unjudged.cast(pl.UInt8).alias("unjudged")))  # a byte: Arrow packs booleans in bits
        table = table.with_columns(by_task=np.argsort(table["task"].to_numpy(), kind="stable"))
        schema = SCHEMA.with_metadata({TASKS: json.dumps(names).encode()})
        return write_one_batch(self.path, table.to_arrow().cast(schema).combine_chunks())

