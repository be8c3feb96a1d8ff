"""The mask stage's memory path: a synthetic work directory, exact search against brute force, chunked reads
equal to the in-RAM path, and the index chosen by the memory budget."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest
from conftest import ROOT, run_stage
from test_mask import candidates, mined

from benchmarks import synthetic_pool
from gist_mining import cpu_flags, openblas_kernel
from gist_mining.errors import UsageError
from gist_mining.lists import PAD_ID, padded
from gist_mining.mask import settings as mask_settings
from gist_mining.mining.index import (
    STAGE_BYTES_PER_VECTOR,
    build_index,
    bytes_per_vector,
    load_index,
    parse_bytes,
    resolve_kind,
    save_index,
    search_depth,
)
from gist_mining.mining.search import search_candidates
from gist_mining.workdir import load_embeddings
from pipeline import mask

pytestmark = pytest.mark.slow  # scale: every index kind, shard processes

POOL, ANCHORS, DIM = 4000, 150, 16


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return synthetic_pool.main(["--work", str(tmp_path_factory.mktemp("synthetic") / "w"), "--pool", str(POOL),
                                "--anchors", str(ANCHORS), "--dim", str(DIM), "--texts-per-shard", "1000"])


@pytest.fixture
def work(synthetic, tmp_path):
    shutil.copytree(synthetic, tmp_path / "w")
    return tmp_path / "w"


def test_synthetic_pool_is_an_embed_work_directory_and_flat_search_is_exact(work):
    assert run_stage(mask, "--work", work, "--k", 20, "--index", "flat") == 0
    ids, vectors = load_embeddings(work)  # the shards as written, float16 widened to float32
    assert len(ids) == POOL + ANCHORS and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-2)
    texts = pl.read_parquet(work / "texts.parquet")
    by_id = dict(zip(ids.tolist(), vectors))
    pool = texts.filter("is_document")["text_id"].to_numpy()
    pool_vectors = np.stack([by_id[i] for i in pool])
    found = candidates(work)
    assert found.height == ANCHORS
    for row in found.iter_rows(named=True):
        scores = pool_vectors @ by_id[row["query_id"]]
        order = [i for i in np.argsort(-scores, kind="stable") if pool[i] not in (row["query_id"], row["positive_id"])]
        assert row["candidate_ids"] == pool[order[:20]].tolist()
        np.testing.assert_allclose(row["candidate_scores"], scores[order[:20]], atol=1e-5)
    text_of = dict(texts.select("text_id", "text").iter_rows())
    # the synthetic queries sit near their positive: most rank it above every candidate
    assert (found["positive_score"] > found["candidate_scores"].list.first()).mean() > 0.5
    assert all(text_of[q].replace("query", "doc") == text_of[p] for q, p in found.select("query_id", "positive_id").iter_rows())


def test_chunked_reads_equal_the_in_memory_path(work, monkeypatch):
    """Anchors read one shard at a time, searched a few at a time, candidates scored exactly from rows read off disk:
    the same ids and scores as one search over all anchors with the whole pool in RAM."""
    monkeypatch.setattr(mask_settings, "CHUNK_BYTES", 7 * 3 * 20 * DIM * 4)  # 7 anchors per chunk at depth 3
    assert run_stage(mask, "--work", work, "--k", 20, "--index", "auto", "--memory-budget", "500K",
                     "--anchors-per-shard", 40) == 0
    assert pl.read_json(work / "search_plan.json")["index"].item() == "ivfpq"
    index = load_index(work / "index" / "index.faiss", 20)
    assert search_depth(index) == 3
    pool_ids = np.load(work / "index" / "pool_ids.npy")
    ids, vectors = load_embeddings(work)
    by_id = dict(zip(ids.tolist(), vectors))
    anchors = pl.read_parquet(work / "anchors.parquet").sort("anchor_id")
    queries = np.stack([by_id[i] for i in anchors["query_id"]])
    exclude = padded(anchors.select(pl.concat_list("query_id", "positive_id"))["query_id"].to_arrow(), PAD_ID, np.int64)
    expected_ids, expected_scores = search_candidates(index, queries, exclude, pool_ids,
                                                      np.stack([by_id[i] for i in pool_ids]), 20, 3)
    found = candidates(work)
    assert found["candidate_ids"].to_list() == [[i for i in row if i != PAD_ID] for row in expected_ids.tolist()]
    np.testing.assert_allclose(padded(found["candidate_scores"].to_arrow(), -np.inf, np.float32), expected_scores,
                               atol=1e-6)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "hnswsq", "ivfpq"])
def test_index_memory_per_vector_matches_faiss_and_loads_mapped(kind, tmp_path):
    """The estimate auto plans with, against what FAISS serialises per added vector (fixed parts cancel);
    and the saved index is loaded as a memory map of its file that searches as the built one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20_000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = build_index(x[:10_000], kind, 10)
    before = len(faiss.serialize_index(index))
    index.add(x[10_000:])
    measured = (len(faiss.serialize_index(index)) - before) / 10_000
    assert bytes_per_vector(kind, 64) == pytest.approx(measured, rel=0.1)
    save_index(index, tmp_path / "index.faiss")
    loaded = load_index(tmp_path / "index.faiss", 10)
    assert str(tmp_path / "index.faiss") in Path("/proc/self/maps").read_text()
    for got, want in zip(loaded.search(x[:200], 30), index.search(x[:200], 30)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_two_shard_processes_at_once_equal_one(work, tmp_path, kind):
    """Started together, two shard processes build the index once (the other waits and loads the same file)
    and write the same candidates and mined tables as one process."""
    shutil.copytree(work, tmp_path / "split")
    common = ["--k", 10, "--anchors-per-shard", 40, "--index", kind]
    assert run_stage(mask, "--work", work, *common) == 0
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.mask", "--work", str(tmp_path / "split"),
                               *map(str, common), "--num-shards", "2", "--shard-index", str(i)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    assert (tmp_path / "split" / "mined_summary.json").exists()
    assert candidates(work).equals(candidates(tmp_path / "split")) and mined(work).equals(mined(tmp_path / "split"))


def test_auto_index_follows_the_memory_budget():
    n, dim = 10_000_000, 384

    def cost(kind):
        return (bytes_per_vector(kind, dim) + STAGE_BYTES_PER_VECTOR) * n

    assert parse_bytes("8G") == 8 << 30 and parse_bytes("512MiB") == 512 << 20 and parse_bytes("1000") == 1000
    assert resolve_kind("auto", n, dim, 2 * cost("hnsw")) == "hnsw"
    assert resolve_kind("auto", n, dim, 2 * cost("hnsw") - 1) == "hnswsq"
    assert resolve_kind("auto", n, dim, parse_bytes("8G")) == "ivfpq"  # HNSW over 8-bit vectors: 6.4 GB
    assert resolve_kind("auto", 200_000, dim, parse_bytes("8G")) == "flat"
    assert resolve_kind("auto", 200_000, dim, 2 * cost("flat") * 200_000 // n - 1) == "hnswsq"
    assert resolve_kind("hnsw", n, dim, 1) == "hnsw"  # an explicit kind is taken as given
    with pytest.raises(UsageError, match="at least"):
        resolve_kind("auto", n, dim, 2 * cost("ivfpq") - 1)
    with pytest.raises(UsageError, match="--memory-budget"):
        parse_bytes("lots")


def test_faiss_runs_the_matrix_kernel_of_this_cpu():
    """faiss-cpu's OpenBLAS picks a generic kernel on CPU models it does not know (this machine: Prescott,
    2.4-4.2x slower exact search); importing gist_mining names the kernel from the CPU's instruction sets."""
    libs = sorted((Path(faiss.__file__).parents[1] / "faiss_cpu.libs").glob("libopenblas*"))
    kernel = openblas_kernel(cpu_flags())
    if not libs or kernel is None:
        pytest.skip("faiss without its own OpenBLAS, or a CPU without AVX2")
    probe = ("import gist_mining, faiss, ctypes, sys; name = ctypes.CDLL(sys.argv[1]).openblas_get_corename; "
             "name.restype = ctypes.c_char_p; print(name().decode())")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    core = subprocess.run([sys.executable, "-c", probe, str(libs[0])], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert core == kernel
