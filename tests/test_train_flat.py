"""The trainer's memory flat in the anchors: a batch's texts and guide vectors read from the row and text tables and
the vector store equal the whole tables read plainly, nothing of them is mapped into memory, a run logs the same
losses with every vector on the device or none, and the tables are checked against their records like every other
file."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import make_pairs, run_stage

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.training.batches import EpochPlan, PaperPlan
from gist_mining.training.data import TrainingData, guide_cache_bytes
from pipeline import embed, mask
from train import run as train_command


def mined(root, guide, *prompts):
    make_pairs(48, seed=5).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", guide,
                     "--texts-per-shard", 40, *prompts) == 0
    assert run_stage(mask, "--work", root / "w", "--k", 10, "--negatives-per-anchor", 3) == 0
    return root / "w"


@pytest.fixture(scope="module")
def two_roles(tmp_path_factory, tiny_guide):
    return mined(tmp_path_factory.mktemp("roles"), tiny_guide, "--query-prompt", "query: ", "--document-prompt",
                 "passage: ")


@pytest.fixture(scope="module", params=["one role", "two roles"])
def work(request, tmp_path_factory, tiny_guide):
    """Each text embedded once (one vector matrix), or queries again with their own prompt (two)."""
    if request.param == "two roles":
        return request.getfixturevalue("two_roles")
    return mined(tmp_path_factory.mktemp("one"), tiny_guide)


def plain_batch(work, rows: list[int], negatives: int) -> tuple[dict, dict]:
    """The oracle: the batch's texts and float16 guide vectors from texts.parquet and the embedding shards, read
    whole (each role's column of the shards, as the embed stage wrote it), with no text table or vector store."""
    mined = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")[rows]
    ids = {"queries": mined["query_id"].to_list(), "positives": mined["positive_id"].to_list(),
           "negatives": [i for n in mined["negative_ids"].to_list() for i in n[:negatives]]}
    text_of = dict(pl.read_parquet(work / "texts.parquet").select("text_id", "text").iter_rows())
    shards = pl.read_parquet(work / "embeddings" / "*.parquet")
    column = {"queries": "query_embedding" if "query_embedding" in shards.columns else "embedding",
              "positives": "embedding", "negatives": "embedding"}
    vectors = {c: dict(zip(shards["text_id"].to_list(), shards[column[c]].to_list())) for c in ids}
    dimension = len(shards["embedding"][0])
    return ({c: [text_of[i] for i in v] for c, v in ids.items()},
            {c: torch.tensor([vectors[c][i] for i in v], dtype=torch.float32).reshape(len(v), dimension).half()
             for c, v in ids.items()})


def test_batches_read_per_batch_equal_the_whole_tables(work):
    per_batch, on_device = TrainingData(work, 2, "cpu"), TrainingData(work, 2, "cpu", guide_cache=None)
    assert not per_batch.guide and on_device.guide  # the default holds no vector; all: every one the rows use
    rng = np.random.default_rng(0)
    for size in (1, 5, 17, len(per_batch)):
        rows = rng.choice(len(per_batch), size, replace=False).tolist()
        texts, guide = plain_batch(work, rows, 2)
        assert size < 17 or len(texts["negatives"]) > 5
        for data in (per_batch, on_device):
            batch = data.get_batch(rows)
            assert batch.texts == texts
            records = data.rows.read(rows)  # as the stock trainer's loss asks: no texts
            (ids, counts), (at, _) = workdir.documents_of(records), workdir.documents_of(records, "_at")
            untexted = data.batch(records, (ids, at), counts, with_texts=False)
            assert untexted.texts == {}
            for column, vectors in guide.items():
                assert torch.equal(batch.guide[column], vectors) and torch.equal(untexted.guide[column], vectors), column


def test_a_run_logs_the_same_losses_with_every_vector_on_the_device_or_none(two_roles, tiny_model, tmp_path):
    def losses(cache: str) -> list[dict]:
        out = tmp_path / cache
        assert run_stage(train_command, "--work", two_roles, "--out", out, "--student", tiny_model, "--max-steps", 4,
                         "--batch-size", 8, "--negatives-in-batch", 2, "--guide-cache", cache) == 0
        logged = [json.loads(line) for line in (out / workdir.METRICS).read_text().splitlines()]
        return [{k: v for k, v in record.items() if k != "seconds"} for record in logged]

    everything = losses("all")
    assert len(everything) == 4 and losses("0") == everything


def test_a_budget_caches_the_vectors_only_when_all_fit(two_roles):
    data = TrainingData(two_roles, 2, "cpu", guide_cache=None)
    size = sum(t.numel() * t.element_size() for t in data.guide.values())
    assert size and TrainingData(two_roles, 2, "cpu", guide_cache=size).guide
    assert not TrainingData(two_roles, 2, "cpu", guide_cache=size - 1).guide


def test_guide_cache_sizes():
    assert guide_cache_bytes("all") is None and guide_cache_bytes("0") == 0 and guide_cache_bytes("2G") == 2 << 30
    with pytest.raises(UsageError, match="--guide-cache must be a size"):
        guide_cache_bytes("plenty")


def refused_after_a_flipped_byte(table: Path, work: Path) -> str:
    """What loading the training data says once a byte of ``table`` is flipped (the same size: only the SHA-256
    can tell)."""
    data = bytearray(table.read_bytes())
    data[len(data) // 2] ^= 0xFF
    table.write_bytes(bytes(data))
    with pytest.raises(UsageError) as refused:
        TrainingData(work, 2, "cpu")
    return str(refused.value)


def test_a_changed_text_table_is_refused_in_one_line_naming_the_rebuild(work, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    table = copy / workdir.TEXT_TABLE
    workdir.TextTable(copy)
    line = refused_after_a_flipped_byte(table, copy)
    assert "\n" not in line and str(table) in line and f"rm {copy / workdir.TEXT_TABLE_MARKER}" in line
    (copy / workdir.TEXT_TABLE_MARKER).unlink()  # what the line says to do
    assert workdir.TextTable(copy).texts(np.arange(3)) == workdir.TextTable(work).texts(np.arange(3))


def test_a_table_from_other_embeddings_is_built_again(work, tmp_path):
    """A stale table (its marker names other embeddings) is made again, as the vector matrix is."""
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    marker = copy / workdir.TEXT_TABLE_MARKER
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "fingerprint": "0" * 64}))
    (copy / workdir.TEXT_TABLE).write_bytes(b"stale")
    table = workdir.TextTable(copy)
    assert json.loads(marker.read_text())["fingerprint"] == record["fingerprint"]
    texts = dict(pl.read_parquet(copy / "texts.parquet").select("text_id", "text").iter_rows())
    assert table.ids().tolist() == sorted(texts) and table.texts(np.arange(len(table))) == [texts[i] for i in sorted(texts)]


def test_the_table_is_built_where_the_vector_matrix_is_not_yet(work, tmp_path):
    """Its build needs the matrices, each built behind the lock the table's build holds: built first, no deadlock."""
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    shutil.rmtree(copy / workdir.VECTORS)
    opened = []
    thread = threading.Thread(target=lambda: opened.append(workdir.TextTable(copy)), daemon=True)
    thread.start()
    thread.join(120)
    assert opened and len(opened[0]) == pl.read_parquet(copy / "texts.parquet").height


def test_a_changed_row_table_is_refused_in_one_line_and_a_stale_one_built_again(work, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    rows = workdir.RowTable(copy, 2)
    path, marker, expected = rows.path, rows.marker, rows.read(np.arange(len(rows)))
    line = refused_after_a_flipped_byte(path, copy)
    assert "\n" not in line and str(path) in line and f"rm {marker}" in line
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "fingerprint": "0" * 64}))  # as after a refilter: other mined tables
    rebuilt = workdir.RowTable(copy, 2)
    assert np.array_equal(rebuilt.read(np.arange(len(rebuilt))), expected)
    assert json.loads(marker.read_text())["fingerprint"] == record["fingerprint"]
    assert workdir.RowTable(copy, 1).path != path  # another share of the lists: a table of its own


def test_fixed_rows_read_what_numpy_loads(tmp_path):
    rng = np.random.default_rng(0)
    records = np.zeros(1000, workdir.row_table.record_type(3))
    for field in records.dtype.names:
        records[field] = rng.integers(-5, 1 << 40, records[field].shape).astype(records.dtype[field].base)
    matrix = rng.standard_normal((50, 8)).astype(np.float16)
    np.save(tmp_path / "records.npy", records)
    np.save(tmp_path / "matrix.npy", matrix)
    rows, lines = workdir.FixedRows(tmp_path / "records.npy"), workdir.FixedRows(tmp_path / "matrix.npy")
    for picks in ([], [5], [3, 3, 2, 4], [999, 0], rng.integers(0, 1000, 300)):
        assert rows.read(picks).tobytes() == records[picks].tobytes()
        assert np.array_equal(lines.read(np.asarray(picks, int) % 50), matrix[np.asarray(picks, int) % 50])
    starts, counts = [10, 0, 990, 10, 500], [5, 0, 10, 1, 0]
    assert rows.read_spans(starts, counts).tobytes() == np.concatenate(
        [records[s: s + c] for s, c in zip(starts, counts)]).tobytes()
    documents, anchors = rows.columns("documents", "anchor_id", chunk=7)
    assert np.array_equal(documents, records["documents"]) and np.array_equal(anchors, records["anchor_id"])
    np.save(tmp_path / "empty.npy", records[:0])
    assert workdir.FixedRows(tmp_path / "empty.npy").columns("documents")[0].shape == (0, 3)
    cut = tmp_path / "cut.npy"  # a file shorter than its header says: refused in one line naming it
    cut.write_bytes((tmp_path / "records.npy").read_bytes()[:-10])
    assert np.array_equal(workdir.FixedRows(cut).read([0, 5]), records[[0, 5]])
    with pytest.raises(UsageError, match=f"{cut}: shorter than its header says"):
        workdir.FixedRows(cut).read([3, 999])


def test_training_maps_none_of_the_tables_into_memory(work, tmp_path):
    """Reads by row, not a memory map: a mapped table's pages count in RSS, and they grow with the table. After a
    batch, an epoch's plan both ways and a cached run's start, no file of the work directory is mapped."""
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    data = TrainingData(copy, 2, "cpu")
    batch = data.get_batch([0, 3, 5])
    assert list(EpochPlan(data.plan_rows, 4, 0, 0)) and list(PaperPlan(data.plan_rows, 4, 0, 0)) is not None
    assert TrainingData(copy, 2, "cpu", guide_cache=None).get_batch([0, 3, 5]).texts == batch.texts
    mapped = Path("/proc/self/maps").read_text()
    assert str(copy) not in mapped and (copy / workdir.TEXT_TABLE).is_file()
