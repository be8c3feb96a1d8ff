"""A retrieval split read from a folder, in either layout: BEIR's (``corpus.jsonl`` with ``_id``/``title``/``text``,
``queries.jsonl``, ``qrels/<split>.tsv`` with ``query-id``/``corpus-id``/``score``; also as Parquet, CSV or JSONL)
or the bundled sets' (``queries.parquet``/``corpus.parquet``/``qrels.parquet`` with ``query_id``/``doc_id``/
``text``). The files go through the same checked reader as ``pipeline.embed --queries/--corpus/--qrels``
(``gist_mining.inputs.retrieval_tables``): a bad row is one line naming the file and the row."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gist_mining.errors import InputError
from gist_mining.inputs import retrieval_tables

SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson", ".csv", ".tsv")


@dataclass(frozen=True)
class RetrievalSplit:
    """What an evaluator takes: texts by id, and each query's relevant documents (qrels scoring above 0)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]
    files: tuple[Path, ...]  # the files read: queries, corpus, qrels


def _one(folder: Path, stem: str) -> Path | None:
    found = [folder / f"{stem}{suffix}" for suffix in SUFFIXES if (folder / f"{stem}{suffix}").is_file()]
    if len(found) > 1:
        raise InputError([f"{folder}: several {stem} files ({', '.join(p.name for p in found)}); keep one"])
    return found[0] if found else None


def split_files(folder: Path, split: str = "test") -> tuple[Path, Path, Path]:
    """The queries, corpus and qrels files of a folder: ``qrels.*`` beside the others, else BEIR's ``qrels/SPLIT.*``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError([f"{folder}: not a folder (a retrieval split is a folder of queries, corpus and qrels)"])
    queries, corpus = _one(folder, "queries"), _one(folder, "corpus")
    qrels = _one(folder, "qrels") or (_one(folder / "qrels", split) if (folder / "qrels").is_dir() else None)
    if qrels is None and (folder / "qrels").is_dir():
        have = sorted(p.stem for p in (folder / "qrels").iterdir() if p.suffix in SUFFIXES)
        raise InputError([f"{folder / 'qrels'}: no split {split!r} (has: {', '.join(have) or 'none'})"])
    missing = [name for name, path in (("queries", queries), ("corpus", corpus), ("qrels", qrels)) if path is None]
    if missing:
        raise InputError([f"{folder}: no {name} file (expected {name}{'/' + split if name == 'qrels' else ''}.jsonl, "
                          f".parquet, .csv or .tsv)" for name in missing])
    return queries, corpus, qrels


def read_split(folder: Path, split: str = "test") -> RetrievalSplit:
    """The split in ``folder`` (either layout, see the module), checked; ``split`` picks BEIR's qrels/SPLIT file."""
    files = split_files(folder, split)
    with tempfile.TemporaryDirectory(prefix="gist-eval-") as tmp:
        tables = {kind: frame.collect() for kind, frame in retrieval_tables(*files, Path(tmp)).items()}
    relevant: dict[str, set[str]] = {}
    for query, document in tables["qrels"].filter(pl.col("score") > 0).select("query-id", "corpus-id").iter_rows():
        relevant.setdefault(query, set()).add(document)
    if not relevant:
        raise InputError([f"{files[2]}: no qrel scores above 0: nothing to evaluate"])
    return RetrievalSplit(queries=dict(tables["queries"].select("_id", "text").iter_rows()),
                          corpus=dict(tables["corpus"].select("_id", "text").iter_rows()),
                          relevant=relevant, files=files)
