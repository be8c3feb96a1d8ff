"""The embed stage: ids, dedup, embeddings, bad input, resume, staleness, sharding, readers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, make_pairs, run_module

from gist_mining import cli, planning, workdir
from gist_mining.workdir import EMBED_MANIFEST, load_embeddings, text_id
from pipeline import embed


def run_embed(*args) -> int:
    """The stage's command line in-process (exit status as a CLI would give it)."""
    try:
        cli.run(lambda: embed.main([str(a) for a in args]))
    except SystemExit as exit_:
        return exit_.code
    return 0


def read_outputs(work):
    ids, vectors = load_embeddings(work)
    order = np.argsort(ids)
    texts = pl.read_parquet(work / "texts.parquet").sort("text_id")
    anchors = pl.read_parquet(work / "anchors.parquet")
    return ids[order], vectors[order], texts, anchors


def test_dedup_and_stable_ids(tmp_path):
    first = pl.DataFrame({"query": ["q one", "q two", "shared"], "positive": ["p one", "shared", "p one"],
                          "negative": [["n1", "p one"], None, ["q one"]], "task": ["x", "y", None]})
    second = pl.DataFrame({"query": ["q one"], "positive": ["p two"]})
    first.write_parquet(tmp_path / "a.parquet")
    second.write_ndjson(tmp_path / "b.jsonl")
    pl.DataFrame({"text": ["corpus only", "n1"]}).write_parquet(tmp_path / "c.parquet")

    def plan(pairs, corpus, name):
        planned, _ = planning.read_inputs(pairs, [corpus], tmp_path / name)
        return *(pl.read_parquet(planned.path(t)) for t in (workdir.TEXTS, workdir.ANCHORS)), planned.dropped

    texts, anchors, dropped = plan([tmp_path / "a.parquet", tmp_path / "b.jsonl"], tmp_path / "c.parquet", "one")

    distinct = {"q one", "q two", "shared", "p one", "n1", "p two", "corpus only"}
    assert set(texts["text"]) == distinct and texts.height == len(distinct)
    assert all(i == text_id(t) for i, t in texts.select("text_id", "text").iter_rows())
    flags = {t: (q, d) for t, q, d in texts.select("text", "is_query", "is_document").iter_rows()}
    assert flags["shared"] == (True, True) and flags["q one"] == (True, True) and flags["corpus only"] == (False, True)
    assert flags["q two"] == (True, False)
    assert anchors["anchor_id"].to_list() == [0, 1, 2, 3]
    assert anchors["source"].to_list() == [str(tmp_path / n) for n in ("a.parquet",) * 3 + ("b.jsonl",)]
    assert anchors["source_row"].to_list() == [1, 2, 3, 1]
    assert anchors["query_id"].to_list() == [text_id(t) for t in ["q one", "q two", "shared", "q one"]]
    # "p one" is a positive of "q one": as a given negative of "q one" it is dropped
    assert anchors["negative_ids"].to_list() == [[text_id("n1")], [], [text_id("q one")], []] and dropped == 1
    assert anchors["task"].to_list() == ["x", "y", "default", "default"]
    # the same content gets the same ids in another run and in another order
    pl.DataFrame({"text": ["n1", "corpus only"]}).write_parquet(tmp_path / "c2.parquet")
    texts_again, _, _ = plan([tmp_path / "b.jsonl", tmp_path / "a.parquet"], tmp_path / "c2.parquet", "two")
    assert texts_again.sort("text_id").equals(texts.sort("text_id"))


def test_embeddings_equal_model_encode(tmp_path, tiny_model):
    from sentence_transformers import SentenceTransformer

    make_pairs(40).write_parquet(tmp_path / "pairs.parquet")
    assert run_embed("--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", tiny_model,
                     "--texts-per-shard", 16, "--encode-batch-size", 8) == 0
    ids, vectors, texts, anchors = read_outputs(tmp_path / "w")
    assert anchors.height == 40 and len(ids) == texts.height
    expected = SentenceTransformer(str(tiny_model), device="cpu").encode(texts["text"].to_list(), normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    manifest = json.loads((tmp_path / "w" / EMBED_MANIFEST).read_text())
    assert manifest["dimension"] == 32 and manifest["counts"]["texts"] == texts.height
    assert sum(s["rows"] for s in manifest["shards"]) == texts.height and len(manifest["shards"]) > 1
    assert len(manifest["model"]["weights_sha256"]) == 64 and manifest["model"]["max_seq_length"] == 64


def test_float16_storage(tmp_path, tiny_model):
    make_pairs(10).write_parquet(tmp_path / "pairs.parquet")
    assert run_embed("--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", tiny_model,
                     "--dtype", "float16") == 0
    schema = pl.read_parquet_schema(tmp_path / "w" / "embeddings" / "shard-00000.parquet")
    assert schema["embedding"] == pl.Array(pl.Float16, 32)


BAD_INPUTS = {
    "missing.parquet": (pl.DataFrame({"query": ["a"]}), "no columns to take as query and positive (has: query)"),
    "null.parquet": (pl.DataFrame({"query": ["a", None], "positive": ["b", "c"]}), "row 2: column 'query' is null"),
    "empty.parquet": (pl.DataFrame({"query": ["a", "b"], "positive": ["b", "  "]}), "row 2: column 'positive' is empty"),
    "number.parquet": (pl.DataFrame({"query": [1, 2], "positive": ["b", "c"]}), "row 1: column 'query' is int"),
    "negative.parquet": (pl.DataFrame({"query": ["a"], "positive": ["b"], "negative": [["x", ""]]}),
                         "row 1: column 'negative' holds an empty string"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_parquet_input(tmp_path, tiny_model, capsys, name):
    frame, message = BAD_INPUTS[name]
    frame.write_parquet(tmp_path / name)
    assert run_embed("--input", tmp_path / name, "--work", tmp_path / "w", "--guide", tiny_model) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [line for line in err if line.startswith(f"error: {tmp_path / name}: ")]
    assert any(message in line for line in err), err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "suffix, content, message",
    [
        (".jsonl", '{"query": "a", "positive": "b"}\n{"query": "a", "positive": 7}\n', "row 2: column 'positive' is int"),
        (".jsonl", '{"query": "a", "positive": "b"}\n{"query": "a", \n', "row 2: not valid JSON"),
        (".jsonl", '{"query": "a", "positive": "b", "negative": ["c", 3]}\n', "row 1: column 'negative' holds int"),
        (".csv", "query,positive\na,b\nc,\n", "row 2: column 'positive' is null"),
        (".parquet", "not a parquet file", "unreadable"),
        (".txt", "query", "unknown format"),
    ],
)
def test_bad_text_input(tmp_path, tiny_model, capsys, suffix, content, message):
    path = tmp_path / f"input{suffix}"
    path.write_text(content)
    good = tmp_path / "good.parquet"
    make_pairs(3).write_parquet(good)
    assert run_embed("--input", good, "--input", path, "--work", tmp_path / "w", "--guide", tiny_model) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: " in err and message in err, err
    assert not (tmp_path / "w").exists()


def test_missing_file_and_corpus_column(tmp_path, tiny_model, capsys):
    make_pairs(3).write_parquet(tmp_path / "pairs.parquet")
    pl.DataFrame({"body": ["x"]}).write_parquet(tmp_path / "corpus.parquet")
    code = run_embed("--input", tmp_path / "nope.jsonl", "--input", tmp_path / "pairs.parquet",
                     "--corpus", tmp_path / "corpus.parquet", "--work", tmp_path / "w", "--guide", tiny_model)
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 2
    assert "nope.jsonl: no such file" in err[0] and "corpus.parquet: missing column 'text'" in err[1]


def test_exit_status_from_the_command_line(tmp_path):
    pl.DataFrame({"query": ["a"]}).write_parquet(tmp_path / "bad.parquet")
    result = run_module("pipeline.embed", "--input", tmp_path / "bad.parquet", "--work", tmp_path / "w", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        f"error: {tmp_path / 'bad.parquet'}: no columns to take as query and positive (has: query); expected one of")


def test_unknown_model_names_what_works(tmp_path, capsys):
    make_pairs(3).write_parquet(tmp_path / "pairs.parquet")
    assert run_embed("--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", "bge-large") == 2
    err = capsys.readouterr().err
    assert "model 'bge-large': no such directory, not a bundled name" in err and "all-mpnet-base-v2" in err


def test_stale_inputs_refused_then_overwritten(tmp_path, tiny_model, tiny_guide, capsys):
    make_pairs(12).write_parquet(tmp_path / "pairs.parquet")
    args = ["--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w"]
    assert run_embed(*args, "--guide", tiny_model) == 0
    first = read_outputs(tmp_path / "w")
    assert run_embed(*args, "--guide", tiny_guide) == 2
    assert "different model" in capsys.readouterr().err
    make_pairs(12, seed=5).write_parquet(tmp_path / "pairs.parquet")
    assert run_embed(*args, "--guide", tiny_model) == 2
    assert "different inputs" in capsys.readouterr().err
    assert read_outputs(tmp_path / "w")[2].equals(first[2])  # refused runs changed nothing
    assert run_embed(*args, "--guide", tiny_model, "--overwrite") == 0
    assert not read_outputs(tmp_path / "w")[2].equals(first[2])


@pytest.mark.slow
def test_two_shard_processes_equal_one(tmp_path, tiny_model):
    make_pairs(60).write_parquet(tmp_path / "pairs.parquet")
    common = ["--input", tmp_path / "pairs.parquet", "--guide", tiny_model, "--texts-per-shard", 20]
    assert run_embed(*common, "--work", tmp_path / "one") == 0
    env_args = [*common, "--work", tmp_path / "two", "--num-shards", 2]
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline.embed", *map(str, env_args), "--shard-index", str(i)],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    assert [p.wait() for p in procs] == [0, 0], [p.stderr.read()[-2000:] for p in procs]
    one, two = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "two")
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_allclose(one[1], two[1], atol=1e-6)
    assert one[2].equals(two[2]) and one[3].equals(two[3])


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_model):
    make_pairs(150).write_parquet(tmp_path / "pairs.parquet")
    # without the cache: the second run would read what the first computed, too fast to be killed midway
    common = ["--input", tmp_path / "pairs.parquet", "--guide", tiny_model, "--texts-per-shard", 10, "--no-cache"]
    assert run_embed(*common, "--work", tmp_path / "whole") == 0
    # batch size 1 makes the run slow enough to kill between its first and last shard
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.embed", *map(str, common), "--work", str(tmp_path / "cut"),
                             "--encode-batch-size", "1"], cwd=ROOT, stderr=subprocess.DEVNULL)
    shards = tmp_path / "cut" / "embeddings"
    deadline = time.time() + 120
    while time.time() < deadline and not list(shards.glob("_*.done")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(shards.glob("_*.done")))
    n_shards = len(json.loads((tmp_path / "whole" / EMBED_MANIFEST).read_text())["shards"])
    assert 0 < done < n_shards and not (tmp_path / "cut" / EMBED_MANIFEST).exists()
    assert run_embed(*common, "--work", tmp_path / "cut") == 0
    whole, cut = read_outputs(tmp_path / "whole"), read_outputs(tmp_path / "cut")
    np.testing.assert_array_equal(whole[0], cut[0])
    np.testing.assert_allclose(whole[1], cut[1], atol=1e-6)


def test_tables_open_with_polars_pyarrow_and_datasets(tmp_path, tiny_model):
    import datasets
    import pyarrow.dataset as ds

    make_pairs(10).write_parquet(tmp_path / "pairs.parquet")
    assert run_embed("--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", tiny_model) == 0
    work = tmp_path / "w"
    for path, files in (("texts.parquet", "texts.parquet"), ("anchors.parquet", "anchors.parquet"),
                        ("embeddings", "embeddings/*.parquet")):
        n_polars = pl.scan_parquet(work / files).select(pl.len()).collect().item()
        n_arrow = ds.dataset(str(work / path), format="parquet").count_rows()
        n_hf = len(datasets.load_dataset("parquet", data_files=str(work / files), split="train",
                                         cache_dir=str(tmp_path / "hf")))
        assert n_polars == n_arrow == n_hf > 0


@pytest.mark.slow
def test_torchrun_ranks_with_num_shards_auto_equal_one_process(tmp_path, tiny_model):
    import os
    import socket

    make_pairs(60).write_parquet(tmp_path / "pairs.parquet")
    common = ["--input", tmp_path / "pairs.parquet", "--guide", tiny_model, "--texts-per-shard", 20]
    assert run_embed(*common, "--work", tmp_path / "one") == 0
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
                           "-m", "pipeline.embed", *map(str, common), "--work", str(tmp_path / "two"),
                           "--num-shards", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "process 1 of 2 does" in proc.stderr and "process 0 of 2 does" in proc.stderr
    one, two = read_outputs(tmp_path / "one"), read_outputs(tmp_path / "two")
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_allclose(one[1], two[1], atol=1e-6)
