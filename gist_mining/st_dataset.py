"""The mined anchors as the stock ``SentenceTransformerTrainer`` reads them (``mined_dataset``): Arrow files in the
work directory, built a chunk of rows at a time from the row and text tables, and opened by
``datasets`` memory-mapped, so that neither building nor training holds every row's texts."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa

from gist_mining import export, workdir
from gist_mining.errors import UsageError
from gist_mining.storage import commit, config_fingerprint, tmp_name

LABEL = "label"  # the column the stock collator hands to the loss as a tensor
# The label: these ids, the negatives' ids, and last the row's index in the trainer's row table (workdir.RowTable),
# where the loss reads what else it needs of the row.
ID_COLUMNS = ("anchor_id", "query_id", "positive_id")
CHUNK = 16_384  # rows written at a time
FORMAT = 4  # in the marker's fingerprint: files of another layout are built again


def export_order(anchor_ids: np.ndarray, query_ids: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The ``kept`` rows (of rows in anchor order with these ids) in export's order (gist_mining.export.mined_rows):
    by the first kept anchor of each row's query, then by anchor, so that a repeated query's rows are together."""
    _, first, inverse = np.unique(query_ids[kept], return_index=True, return_inverse=True)
    return kept[np.argsort(anchor_ids[kept][first][inverse], kind="stable")]


def _write(path: Path, rows: workdir.RowTable, chosen: np.ndarray, k: int) -> None:
    """``chosen`` rows, each with k negatives, as columns anchor, positive, negative_1..k and the ids as label."""
    schema = pa.schema([("anchor", pa.string()), ("positive", pa.string()),
                        *((f"negative_{i + 1}", pa.string()) for i in range(k)), (LABEL, pa.list_(pa.int64()))])
    tmp = tmp_name(path)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:  # datasets reads streams
        for begin in range(0, len(chosen), CHUNK):
            part = chosen[begin: begin + CHUNK]
            records = rows.read(part)
            at = np.column_stack([records["query_at"], records["positive_at"], records["documents_at"][:, :k]])
            texts = [rows.texts.texts(column) for column in at.T]
            ids = np.column_stack([records[c] for c in ID_COLUMNS] + [records["documents"][:, :k], part])
            label = pa.ListArray.from_arrays(np.arange(len(part) + 1, dtype=np.int32) * ids.shape[1], ids.ravel())
            writer.write_batch(pa.record_batch([*map(pa.array, texts), label], schema=schema))
    commit(tmp, path)


def mined_dataset(work, num_negatives: int = 1, short: str = "keep"):
    """The mined anchors for the stock ``SentenceTransformerTrainer``: the texts in columns anchor, positive,
    negative_1 .. negative_N (``pipeline.export --format n-tuple``'s layout and order, with sentence-transformers'
    first column name), and ``label``: each row's ids and its row in the row table, for StoredGuideGISTLoss. Built once per mined fingerprint, N
    and ``short`` into ``mined/st-nN-SHORT-K.arrow`` behind a marker, and memory-mapped by ``datasets``.

    ``short``: anchors with fewer than N negatives are kept (``"keep"``, the default, as train.run keeps them: a
    ``datasets.DatasetDict`` with one data set per number of negatives, ``negatives_N`` .. ``negatives_0``, for
    the trainer's multi-dataset batches, each batch from one of them), or left out (``"drop"``, as the n-tuple
    export leaves them out: a ``datasets.Dataset``). Where mining leaves most anchors short (a classification-style
    set whose candidates are mostly false negatives), dropping them trains on few anchors, and trains worse
    (docs/benchmarks.md, "In sentence-transformers' trainer")."""
    from datasets import Dataset, DatasetDict

    if short not in export.SHORT:
        raise UsageError(f"short must be drop or keep, not {short!r}")
    work = Path(work)
    manifest = workdir.checked_mined_manifest(work)
    n = export.negatives_wanted(work, manifest, num_negatives)
    # Each row's first n negatives (opened before the build below takes the work directory's lock: it may build too).
    rows = workdir.RowTable(work, n)
    name = f"{workdir.MINED}/st-n{n}-{short}"

    def build():
        counts, anchor_ids, query_ids = rows.every("n_documents", "anchor_id", "query_id")
        # drop: the order of the rows with N negatives alone, as the export orders what it keeps
        order = export_order(anchor_ids, query_ids, np.flatnonzero(counts == n) if short == "drop" else np.arange(len(rows)))
        paths = []
        for k in ([n] if short == "drop" else range(n, -1, -1)):
            chosen = order[counts[order] == k]
            if len(chosen) or short == "drop":
                paths.append(work / f"{name}-{k}.arrow")
                _write(paths[-1], rows, chosen, k)
        return paths, {"short": int((counts < n).sum())}

    fingerprint = config_fingerprint({"mined": manifest.fingerprint, "n": n, "short": short, "format": FORMAT})
    record = workdir.build_once(work, work / f"{workdir.MINED}/_st-n{n}-{short}.done", fingerprint, build, verify=False)
    n_short = record["short"]
    if n_short and short == "drop":
        warnings.warn(f"mined_dataset: {n_short} of {len(rows)} anchors in {work} have fewer than {n} negatives and are "
                      "left out; short='keep' trains them too, as train.run does", stacklevel=2)
    files = sorted(record["files"], key=lambda f: -int(Path(f).stem.rsplit("-", 1)[1]))  # N first
    datasets = {f"negatives_{Path(f).stem.rsplit('-', 1)[1]}": Dataset.from_file(str(work / f)) for f in files}
    return next(iter(datasets.values())) if short == "drop" else DatasetDict(datasets)

