"""The embedding cache: warm runs equal cold ones bit for bit, hits and misses, staleness, corruption, pruning."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, make_pairs, run_stage

from gist_mining.workdir import EMBED_MANIFEST, load_embeddings, read_record
from pipeline import cache as cache_cli
from pipeline import embed


@pytest.fixture
def encoded(monkeypatch) -> list[int]:
    """How many texts each call of the model's encode was given (the forward passes' inputs)."""
    from sentence_transformers import SentenceTransformer

    calls, original = [], SentenceTransformer.encode

    def counting(self, sentences, *args, **kwargs):
        calls.append(len(sentences))
        return original(self, sentences, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting)
    return calls


def distinct_texts(pairs: pl.DataFrame) -> set[str]:
    return set(pairs["query"]) | set(pairs["positive"]) | set(pairs["negative"].explode().drop_nulls())


def embed_run(tmp_path, work: str, pairs: str, model, *extra) -> None:
    """The torch backend, whose forward passes ``encoded`` counts (the onnx backend is keyed apart: test_onnx)."""
    assert run_stage(embed, "--input", tmp_path / pairs, "--work", tmp_path / work, "--guide", model,
                     "--texts-per-shard", 40, "--encode-batch-size", 8, "--backend", "torch", *extra) == 0


def shard_bytes(work) -> list[bytes]:
    """The embedding shards' bytes, in the manifest's order."""
    manifest = read_record(work / EMBED_MANIFEST)
    return [(work / s["file"]).read_bytes() for s in manifest["shards"]]


def shard_vectors(work) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = load_embeddings(work)
    order = np.argsort(ids)
    return ids[order], vectors[order]


@pytest.fixture
def pairs(tmp_path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """60 pairs, and the same 60 plus 6 new ones (10% more)."""
    old = make_pairs(60)
    new = pl.concat([old, make_pairs(6, seed=7)])
    old.write_parquet(tmp_path / "old.parquet")
    new.write_parquet(tmp_path / "new.parquet")
    return old, new


def test_warm_cache_writes_the_shards_a_run_without_cache_writes(tmp_path, tiny_model, pairs, encoded):
    cache = ["--cache-dir", tmp_path / "cache"]
    n_old = len(distinct_texts(pairs[0]))
    embed_run(tmp_path, "plain", "old.parquet", tiny_model, "--no-cache")
    embed_run(tmp_path, "cold", "old.parquet", tiny_model, *cache)
    assert sum(encoded) == 2 * n_old
    embed_run(tmp_path, "warm", "old.parquet", tiny_model, *cache)
    assert sum(encoded) == 2 * n_old  # nothing encoded
    assert shard_bytes(tmp_path / "warm") == shard_bytes(tmp_path / "cold") == shard_bytes(tmp_path / "plain")
    assert len(shard_bytes(tmp_path / "plain")) > 1
    # Entries hold the model's float32 output, so a float16 work directory is served from them too.
    embed_run(tmp_path, "plain16", "old.parquet", tiny_model, "--no-cache", "--dtype", "float16")
    embed_run(tmp_path, "warm16", "old.parquet", tiny_model, *cache, "--dtype", "float16")
    assert sum(encoded) == 3 * n_old
    assert shard_bytes(tmp_path / "warm16") == shard_bytes(tmp_path / "plain16")


def test_two_roles_are_cached_apart(tmp_path, tiny_model, pairs, encoded):
    """A query prompt unlike the document prompt: every text in the document role, queries in the query role too."""
    cache, roles = ["--cache-dir", tmp_path / "cache"], ["--query-prompt", "query: "]
    old = pairs[0]
    embed_run(tmp_path, "plain", "old.parquet", tiny_model, "--no-cache", *roles)
    embed_run(tmp_path, "cold", "old.parquet", tiny_model, *cache, *roles)
    assert sum(encoded) == 2 * (len(distinct_texts(old)) + len(set(old["query"])))
    embed_run(tmp_path, "warm", "old.parquet", tiny_model, *cache, *roles)
    assert sum(encoded) == 2 * (len(distinct_texts(old)) + len(set(old["query"])))  # nothing encoded
    assert shard_bytes(tmp_path / "warm") == shard_bytes(tmp_path / "plain")
    assert len(list((tmp_path / "cache").iterdir())) == 2  # the document role's key and the query role's


def test_ten_percent_new_pairs_encode_only_the_new_texts(tmp_path, tiny_model, pairs, encoded, capsys):
    cache = ["--cache-dir", tmp_path / "cache"]
    embed_run(tmp_path, "old", "old.parquet", tiny_model, *cache)
    encoded.clear()
    embed_run(tmp_path, "new", "new.parquet", tiny_model, *cache)
    new_texts = distinct_texts(pairs[1]) - distinct_texts(pairs[0])
    assert 0 < sum(encoded) == len(new_texts)
    hits = len(distinct_texts(pairs[1])) - len(new_texts)
    assert f"{hits} vectors read, {len(new_texts)} computed and added" in capsys.readouterr().err
    embed_run(tmp_path, "plain", "new.parquet", tiny_model, "--no-cache")
    ids, vectors = shard_vectors(tmp_path / "new")
    plain_ids, plain = shard_vectors(tmp_path / "plain")
    np.testing.assert_array_equal(ids, plain_ids)
    # Texts batched with other texts than in the no-cache run may differ in the last bits, no more.
    np.testing.assert_allclose(vectors, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("change", [["--prompt", "query: "], ["--precision", "bf16"], ["--max-seq-length", 8], "model"])
def test_no_entry_serves_another_model_prompt_or_precision(tmp_path, tiny_model, tiny_guide, pairs, encoded, change):
    cache = ["--cache-dir", tmp_path / "cache"]
    embed_run(tmp_path, "first", "old.parquet", tiny_model, *cache)
    encoded.clear()
    model, extra = (tiny_guide, []) if change == "model" else (tiny_model, change)
    embed_run(tmp_path, "other", "old.parquet", model, *cache, *extra)
    assert sum(encoded) == len(distinct_texts(pairs[0]))  # every text recomputed
    ids, vectors = shard_vectors(tmp_path / "other")
    embed_run(tmp_path, "plain", "old.parquet", model, "--no-cache", *extra)
    assert np.array_equal(vectors, shard_vectors(tmp_path / "plain")[1])
    assert not np.array_equal(vectors, shard_vectors(tmp_path / "first")[1])
    assert len([p for p in (tmp_path / "cache").iterdir()]) == 2  # a key of its own


def test_corrupt_cache_files_are_recomputed_never_read(tmp_path, tiny_model, pairs, encoded, capsys):
    cache = ["--cache-dir", tmp_path / "cache"]
    embed_run(tmp_path, "cold", "old.parquet", tiny_model, *cache)
    files = sorted((tmp_path / "cache").glob("*/*.parquet"))
    assert len(files) >= 2
    truncated, flipped = files[0], files[1]
    lost = pq.read_metadata(truncated).num_rows + pq.read_metadata(flipped).num_rows
    truncated.write_bytes(truncated.read_bytes()[:-100])
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the vectors: the file still parses, only its checksum tells
    flipped.write_bytes(bytes(data))
    assert pq.read_table(flipped).num_rows > 0
    encoded.clear()
    capsys.readouterr()
    embed_run(tmp_path, "again", "old.parquet", tiny_model, *cache)
    err = capsys.readouterr().err
    assert err.count("is corrupt (SHA-256 differs from its name)") == 2
    assert sum(encoded) == lost
    # Recomputed vectors were added back: content-addressed, so the same texts in the same batches may land
    # under a damaged file's own name again, now whole.
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.stem for p in (tmp_path / "cache").glob("*/*.parquet"))
    embed_run(tmp_path, "plain", "old.parquet", tiny_model, "--no-cache")
    ids, vectors = shard_vectors(tmp_path / "again")
    plain_ids, plain = shard_vectors(tmp_path / "plain")
    np.testing.assert_array_equal(ids, plain_ids)
    np.testing.assert_allclose(vectors, plain, atol=1e-6, rtol=0)
    # Corrupting every file: the whole run recomputes, bit for bit the run without cache.
    for path in (tmp_path / "cache").glob("*/*.parquet"):
        path.write_bytes(path.read_bytes()[:-1] + b"\0")
    embed_run(tmp_path, "all-corrupt", "old.parquet", tiny_model, *cache)
    assert shard_bytes(tmp_path / "all-corrupt") == shard_bytes(tmp_path / "plain")


@pytest.mark.slow
def test_concurrent_shard_processes_share_one_cache(tmp_path, tiny_model, pairs, encoded):
    cache = ["--cache-dir", tmp_path / "cache"]
    args = ["--input", tmp_path / "old.parquet", "--guide", tiny_model, "--texts-per-shard", 40, "--encode-batch-size", 8,
            "--work", tmp_path / "two", "--num-shards", 2, "--backend", "torch", *cache]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.embed", *map(str, args), "--shard-index", str(i)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    embed_run(tmp_path, "warm", "old.parquet", tiny_model, *cache)
    assert sum(encoded) == 0
    assert shard_bytes(tmp_path / "warm") == shard_bytes(tmp_path / "two")


def test_info_and_prune(tmp_path, tiny_model, tiny_guide, pairs, capsys):
    root = tmp_path / "cache"
    cache = ["--cache-dir", root]
    embed_run(tmp_path, "a", "old.parquet", tiny_model, *cache)
    embed_run(tmp_path, "b", "old.parquet", tiny_guide, *cache)
    n = len(distinct_texts(pairs[0]))
    capsys.readouterr()
    assert run_stage(cache_cli, "info", *cache) == 0
    out = capsys.readouterr().out
    assert f"2 keys, {len(list(root.glob('*/*.parquet')))} files, {2 * n} entries" in out
    assert str(tiny_model) in out and str(tiny_guide) in out

    guide_files = [p for p in root.glob("*/*.parquet") if str(tiny_guide) in (p.parent / "key.json").read_text()]
    assert run_stage(cache_cli, "prune", *cache, "--model", str(tiny_guide)) == 0
    assert f"removed {len(guide_files)} files" in capsys.readouterr().out
    assert not any(p.exists() for p in guide_files) and len(list(root.iterdir())) == 1

    old, *recent = sorted(root.glob("*/*.parquet"))
    past = time.time() - 3 * 86400
    os.utime(old, (past, past))
    assert run_stage(cache_cli, "prune", *cache, "--older-than", 2) == 0
    assert "removed 1 files" in capsys.readouterr().out
    assert not old.exists() and all(p.exists() for p in recent)

    assert run_stage(cache_cli, "prune", *cache) == 2  # says which files; none chosen is a usage error
    assert run_stage(cache_cli, "prune", *cache, "--all") == 0
    assert list(root.iterdir()) == []
