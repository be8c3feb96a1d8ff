"""Writes the binary fixtures in tests/bad_inputs/ (Parquet files, datasets directories, invalid UTF-8);
the text fixtures there are written by hand. Run from the repository root: python tests/make_bad_inputs.py"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

BAD = Path(__file__).resolve().parent / "bad_inputs"


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def save_dataset(dataset, name: str) -> None:
    shutil.rmtree(BAD / name, ignore_errors=True)
    dataset.save_to_disk(str(BAD / name))


def main() -> None:
    pairs = pl.DataFrame({"query": ["q one", "q two", "q three"], "positive": ["p one", "p two", "p three"]})
    whole = parquet_bytes(pairs)
    files = {
        # A latin-1 (Windows export) "café" and a stray 0xff byte on the second row.
        "invalid_utf8.csv": "query,positive\nq one,p one\nq two,caf\xe9\n".encode("latin-1"),
        "invalid_utf8.jsonl": b'{"query": "q one", "positive": "p one"}\n{"query": "q two \xff", "positive": "p two"}\n',
        "truncated.parquet": whole[: len(whole) // 2],  # an interrupted copy
        "not_parquet.parquet": b"query,positive\nq one,p one\n",  # a CSV file renamed
        "corrupt.parquet": b"PAR1" + b"\x00" * 64 + b"PAR1",
        "int_query.parquet": parquet_bytes(pl.DataFrame({"query": [7, 8], "positive": ["p one", "p two"]})),
        "null_positive.parquet": parquet_bytes(pl.DataFrame({"query": ["q one", "q two"], "positive": ["p one", None]})),
        "negative_list_null.parquet": parquet_bytes(pl.DataFrame(
            {"query": ["q one", "q two"], "positive": ["p one", "p two"], "negative": [["n one"], ["n two", None]]})),
        "negative_list_int.parquet": parquet_bytes(pl.DataFrame(
            {"query": ["q one"], "positive": ["p one"], "negative": [[1, 2]]})),
        "binary_query.parquet": parquet_bytes(pl.DataFrame({"query": [b"q one"], "positive": ["p one"]})),
        "no_rows.parquet": parquet_bytes(pairs.clear()),
        "corpus_missing_text.parquet": parquet_bytes(pl.DataFrame({"body": ["a document"]})),
    }
    for name, data in files.items():
        (BAD / name).write_bytes(data)
    # A Spark or pyarrow dataset: a directory named like a file, holding part files.
    shutil.rmtree(BAD / "spark_output.parquet", ignore_errors=True)
    (BAD / "spark_output.parquet").mkdir()
    pq.write_table(pairs.to_arrow(), BAD / "spark_output.parquet" / "part-00000.parquet")
    save_dataset(datasets.Dataset.from_dict({"text": ["a document"], "label": [1]}), "dataset_wrong_columns")
    save_dataset(datasets.Dataset.from_dict({"query": ["q one", None], "positive": ["p one", "p two"]}), "dataset_null_query")
    split = datasets.Dataset(pa.table({"query": ["q one"], "positive": ["p one"]}))
    save_dataset(datasets.DatasetDict(train=split, test=split), "dataset_dict")


if __name__ == "__main__":
    main()
