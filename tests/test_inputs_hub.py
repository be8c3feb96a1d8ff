"""Hub datasets as inputs, through a fake Hugging Face cache laid out as huggingface_hub lays it out (no Hub here):
ids with subsets and splits from the dataset card or from file names, hf:// paths, revisions, and what is not there."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import polars as pl
import pytest
from conftest import run_module

from gist_mining import planning, workdir
from gist_mining.errors import InputError
from gist_mining.inputs import HubSelection, input_files

MAIN, OTHER = "c" * 40, "d" * 40
CARD = """---
configs:
- config_name: pair
  data_files:
  - split: train
    path: pair/train-*
- config_name: triplet
  default: true
  data_files:
  - split: train
    path: triplet/train-*
  - split: dev
    path: triplet/dev.jsonl
---
# a card
"""
PAIR = pl.DataFrame({"query": ["q one", "q two"], "answer": ["a one", "a two"]})
TRIPLET = pl.DataFrame({"anchor": ["q one", "q two"], "positive": ["a one", "a two"], "negative": ["n one", "n two"]})


def parquet(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def add_dataset(hub: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str | None) -> None:
    """huggingface_hub's cache: blobs/ by content, snapshots/<commit>/ of relative links, refs/<branch>."""
    repo = hub / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    home = tmp_path / "hf"
    add_dataset(home / "hub", "acme/st-style", MAIN, {
        "README.md": CARD.encode(), "pair/train-00000-of-00001.parquet": parquet(PAIR),
        "triplet/train-00000-of-00001.parquet": parquet(TRIPLET), "triplet/dev.jsonl": TRIPLET.head(1).write_ndjson().encode(),
    }, ref="main")
    add_dataset(home / "hub", "acme/plain", MAIN, {
        "data/train-00000-of-00002.parquet": parquet(PAIR.head(1)), "data/train-00001-of-00002.parquet": parquet(PAIR.tail(1)),
        "data/test-00000-of-00001.parquet": parquet(PAIR.reverse()),
    }, ref="main")
    add_dataset(home / "hub", "acme/plain", OTHER, {"data/train-00000-of-00001.parquet": parquet(PAIR.reverse())}, ref="v2")
    monkeypatch.setenv("HF_HOME", str(home))  # for subprocesses
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))  # for this process
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home / "hub"


def planned_pairs(tmp_path, given: str, hub_selection: HubSelection | None = None) -> list[tuple]:
    planned, _ = planning.read_inputs([given], [], tmp_path / f"plan-{len(list(tmp_path.iterdir()))}",
                                            hub=hub_selection)
    texts = dict(pl.read_parquet(planned.path(workdir.TEXTS)).select("text_id", "text").iter_rows())
    anchors = pl.read_parquet(planned.path(workdir.ANCHORS))
    return [(texts[q], texts[p], [texts[n] for n in ns]) for q, p, ns in
            anchors.select("query_id", "positive_id", "negative_ids").iter_rows()]


def test_subsets_and_splits_from_the_dataset_card(tmp_path, hub):
    triplets = [("q one", "a one", ["n one"]), ("q two", "a two", ["n two"])]
    assert planned_pairs(tmp_path, "acme/st-style") == triplets  # the card's default subset, split train
    assert planned_pairs(tmp_path, "acme/st-style", HubSelection(subset="pair")) == [
        ("q one", "a one", []), ("q two", "a two", [])]
    assert planned_pairs(tmp_path, "acme/st-style", HubSelection(split="dev")) == triplets[:1]


def test_splits_by_file_names_and_revisions(tmp_path, hub):
    files = input_files("acme/plain")
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert all(str(f).startswith(str(hub / "datasets--acme--plain" / "snapshots" / MAIN)) for f in files)
    forward = [("q one", "a one", []), ("q two", "a two", [])]
    assert planned_pairs(tmp_path, "acme/plain") == forward
    assert planned_pairs(tmp_path, "acme/plain", HubSelection(split="test")) == forward[::-1]
    assert planned_pairs(tmp_path, "acme/plain", HubSelection(revision="v2")) == forward[::-1]
    assert planned_pairs(tmp_path, "acme/plain", HubSelection(revision=OTHER)) == forward[::-1]


def test_hf_paths(tmp_path, hub):
    assert planned_pairs(tmp_path, "hf://datasets/acme/st-style/pair/*.parquet") == [
        ("q one", "a one", []), ("q two", "a two", [])]
    assert planned_pairs(tmp_path, "hf://datasets/acme/plain@v2/data") == [("q two", "a two", []), ("q one", "a one", [])]


@pytest.mark.parametrize("given, selection, expected", [
    ("acme/plain", HubSelection(split="validation"), "no split 'validation' (has: train, test); choose one with --input-split"),
    ("acme/st-style", HubSelection(subset="quad"), "no subset 'quad' (has: pair, triplet); choose one with --input-subset"),
    ("acme/plain", HubSelection(subset="pair"), "no subset 'pair' (no folder of that name"),
])
def test_a_split_or_subset_that_is_not_there(tmp_path, hub, given, selection, expected):
    with pytest.raises(InputError) as caught:
        input_files(given, selection)
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(f"{given}: {expected}")


def test_a_dataset_neither_cached_nor_reachable_stops_with_a_recipe(tmp_path, hub):
    result = run_module("pipeline.embed", "--input", "acme/missing", "--input-revision", "v9", "--work",
                        tmp_path / "w", check=False)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: acme/missing: a Hub dataset neither in the Hugging Face cache nor reachable (")
    assert "`hf download acme/missing --repo-type dataset --revision v9`" in line
    assert not (tmp_path / "w").exists()


def test_a_missing_local_file_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(planning.read_inputs(["data/train.parquet"], [], tmp_path / "plan"))
