"""A tiny MEDI-shaped data set (GISTEmbed's medi-data-mteb_avs_triplets' columns, tasks in runs, instructions) served
from a fake Hugging Face cache at a revision, for the MEDI input and recipe tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
from conftest import sentence
from test_inputs_hub import add_dataset, parquet

REPO, REVISION = "acme/medi-triplets", "e" * 40
JSON_REPO = "acme/medi-json"  # the same rows as MEDI's JSON writes them: [instruction, text] pairs
# Tasks in runs, as the data set sorts them (the MTEB triplets' tasks named with an mteb prefix).
TASKS = (("quora", 11), ("mteb-banking77-avs_triplets", 40), ("eli5", 9))
INSTRUCTIONS = {"query": "Represent the question for retrieving answers: ", "pos": "Represent the answer",
                "neg": "Represent the answer"}  # the first ends in a space, the others do not


def medi_rows(seed: int = 0) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for task, n in TASKS:
        for _ in range(n):
            texts = {c: sentence(rng) for c in ("query", "pos", "neg")}
            rows.append({**texts, "task_name": task, **{f"{c}_instruct": INSTRUCTIONS[c] for c in texts}})
    return pl.DataFrame(rows)


def serve(hf_home: Path, rows: pl.DataFrame) -> None:
    """REPO at REVISION (main is another commit, with one row less) and JSON_REPO, in the cache under hf_home."""
    hub = hf_home / "hub"
    add_dataset(hub, REPO, REVISION, {"data/train-00000-of-00001.parquet": parquet(rows)}, ref=None)
    add_dataset(hub, REPO, "f" * 40, {"data/train-00000-of-00001.parquet": parquet(rows.head(-1))}, ref="main")
    listed = "".join(json.dumps({**{c: [r[f"{c}_instruct"], r[c]] for c in ("query", "pos", "neg")},
                                 "task_type": r["task_name"]}) + "\n" for r in rows.iter_rows(named=True))
    add_dataset(hub, JSON_REPO, REVISION, {"data/train-00000-of-00001.jsonl": listed.encode()}, ref="main")


def use_cache(hf_home: Path, monkeypatch) -> None:
    """This process and its subprocesses read the fake cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
