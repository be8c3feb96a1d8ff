"""Mining as a grid (gist_mining.grid): with an exact index its candidates equal the single index's, bit for bit,
whatever the slice size; a corrupted cell is found and redone."""

from __future__ import annotations

import shutil

import polars as pl
import pytest
from conftest import pairs_with_second_positives, run_stage

from gist_mining import grid, workdir
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.mask.search_step import SearchStep
from gist_mining.mask.settings import chunk_size
from pipeline import embed, mask

K, ANCHOR_SHARD = 15, 32


@pytest.fixture(scope="module")
def embedded(tmp_path_factory, tiny_guide):
    root = tmp_path_factory.mktemp("grid")
    pairs = pairs_with_second_positives(90, seed=4, repeated=6)
    # ten positives asked as queries too (paraphrase data): texts in both roles, one pool entry each with the queries
    chained = pairs.slice(20, 10).select(pl.col("positive").alias("query"),
                                         (pl.col("query") + " answered").alias("positive"), "task")
    pl.concat([pairs, chained], how="diagonal").write_parquet(root / "pairs.parquet")
    assert run_stage(embed, "--input", root / "pairs.parquet", "--work", root / "w", "--guide", tiny_guide,
                     "--texts-per-shard", 64, "--no-cache") == 0
    return root / "w"


@pytest.fixture(scope="module")
def single_index(embedded, tmp_path_factory):
    """candidates/ of one exact index, with and without --include-queries."""
    out = {}
    for include in (False, True):
        work = tmp_path_factory.mktemp("single") / "w"
        shutil.copytree(embedded, work)
        assert run_stage(mask, "--work", work, *search_args(include), "--index", "flat") == 0
        out[include] = candidates(work)
    return out


def search_args(include_queries: bool) -> list:
    return ["--k", K, "--anchors-per-shard", ANCHOR_SHARD, *["--include-queries"] * include_queries]


def candidates(work) -> pl.DataFrame:
    return pl.read_parquet(work / "candidates" / "*.parquet")


@pytest.mark.parametrize("include_queries", [False, True])
@pytest.mark.parametrize("slice_size", [9, 100, 10_000])  # slices smaller than k, a few, one slice for the pool
def test_grid_equals_the_single_index(embedded, single_index, tmp_path, capsys, slice_size, include_queries):
    work = tmp_path / "w"
    shutil.copytree(embedded, work)
    assert run_stage(mask, "--work", work, *search_args(include_queries), "--pool-slice-size", slice_size) == 0
    anchor_shards = -(-pl.read_parquet(work / "anchors.parquet").height // ANCHOR_SHARD)
    n_slices = -(-len(workdir.candidate_pool(work, include_queries)) // slice_size)
    assert f"grid: {anchor_shards} anchor shard(s) x {n_slices} pool slice(s) to search" in capsys.readouterr().err
    got, want = candidates(work), single_index[include_queries]
    assert got.equals(want)  # ids and float32 scores bit for bit, row for row
    assert not list((work / grid.GRID).glob("*"))  # each shard's cells went once it was searched
    anchors = pl.read_parquet(work / "anchors.parquet")
    positives = anchors.group_by("query_id").agg("positive_id").rows_by_key("query_id", unique=True)
    assert sum(len(p) > 1 for (p,) in positives.values()) == 6
    for query, found in got.select("query_id", "candidate_ids").iter_rows():
        assert not {query, *positives[query][0]} & set(found)
    assert got["candidate_ids"].list.len().min() == K


def test_grid_searches_exactly(embedded, tmp_path, capsys):
    work = tmp_path / "w"
    shutil.copytree(embedded, work)
    assert run_stage(mask, "--work", work, "--pool-slice-size", 50, "--index", "hnsw") == 2
    assert "searches each slice exactly" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--pool-slice-size", 50) == 0
    searched = candidates(work)
    # --memory-budget only chooses an index kind, and a grid's is flat: another budget resumes (no refusal).
    assert run_stage(mask, "--work", work, "--pool-slice-size", 50, "--memory-budget", "1M") == 0
    assert candidates(work).equals(searched)


def test_a_corrupted_cell_is_found_and_redone(embedded, tmp_path, capsys):
    """Anchor shard 1's candidates lost, its cells made again and one corrupted: the rerun redoes that cell and
    writes the shard as before."""
    work = tmp_path / "w"
    shutil.copytree(embedded, work)
    args = ["--work", work, *search_args(False), "--pool-slice-size", 40]
    assert run_stage(mask, *args) == 0
    reference = candidates(work)
    (work / "candidates" / workdir.shard_name(1)).unlink()
    plan = workdir.SearchPlan.from_json(workdir.read_plan(work, "search"))
    cells = grid.Cells(work, plan, needed=[1])
    run_step(grid.CellStep(cells, plan, chunk=chunk_size(K, 1, 32)), ExecutorSettings())
    damaged = cells.path(cells.n_slices + 2)  # anchor shard 1 x slice 2
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF
    damaged.write_bytes(bytes(data))
    capsys.readouterr()
    assert run_stage(mask, *args) == 0
    assert f"{damaged}: corrupt" in capsys.readouterr().err
    assert candidates(work).equals(reference)


@pytest.mark.parametrize("launcher", ["job array", "torchrun"])
def test_grid_split_across_processes(embedded, single_index, tmp_path, monkeypatch, capsys, launcher):
    """Two processes (a job array's shares, or torchrun's ranks): each searches the cells of its own anchor shards,
    then merges them."""
    work = tmp_path / "w"
    shutil.copytree(embedded, work)
    for i in (0, 1):
        if launcher == "torchrun":
            monkeypatch.setenv("WORLD_SIZE", "2")
            monkeypatch.setenv("RANK", str(i))
            sharing = ["--num-shards", "auto"]
        else:
            sharing = ["--num-shards", 2, "--shard-index", i]
        assert run_stage(mask, "--work", work, *search_args(False), "--pool-slice-size", 40, *sharing) == 0
        err = capsys.readouterr().err
        assert f"mask: process {i} of 2 does" in err and "pass --num-shards auto" not in err
    assert candidates(work).equals(single_index[False])


def test_a_search_task_retried_before_its_marker_finds_its_cells(embedded, tmp_path):
    """A worker lost between writing a shard's candidates and its marker is retried (Ray does it): the cells it
    merges are still there, and the retry writes the same shard."""
    work = tmp_path / "w"
    shutil.copytree(embedded, work)
    args = ["--work", work, *search_args(False), "--pool-slice-size", 40]
    assert run_stage(mask, *args) == 0
    reference = candidates(work)
    for folder in ("candidates", "mined"):  # the state of a crash during shard 0's search task
        shutil.rmtree(work / folder)
    (work / "candidates_manifest.json").unlink()
    (work / "mined_manifest.json").unlink()
    plan = workdir.SearchPlan.from_json(workdir.read_plan(work, "search"))
    shards = workdir.Shards(work, workdir.CANDIDATES, plan.anchor_shards, plan.fingerprint)
    run_step(grid.CellStep(grid.Cells(work, plan, needed=[0]), plan, chunk=chunk_size(K, 1, 32)),
             ExecutorSettings())
    step = SearchStep(shards, plan)
    worker = step.open()
    step.run(worker, 0)  # lost before its marker ...
    step.run(worker, 0)  # ... and run again
    assert pl.read_parquet(shards.path(0)).equals(reference.filter(pl.col("anchor_id").is_in(
        pl.read_parquet(shards.path(0))["anchor_id"].implode())))
