"""The ONNX Runtime backend: equal to SentenceTransformer.encode, exported once, refused when it disagrees."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_pairs, run_stage, sentence

from gist_mining import onnx_backend
from gist_mining.errors import UsageError
from gist_mining.models import load_model
from gist_mining.workdir import load_embeddings
from pipeline import embed, mask

pytestmark = pytest.mark.slow  # ONNX export of each pooling and its cache

TEXTS = [sentence(random.Random(i), n) for i, n in enumerate([1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 120, 4, 6, 9])]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GIST_MINING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def variant(tiny_model: Path, out: Path, mode: str, normalize: bool) -> Path:
    """The tiny model's transformer under another pooling, with or without a Normalize module."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(tiny_model.parent / "raw"), max_seq_length=64)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode=mode)]
    SentenceTransformer(modules=modules + ([Normalize()] if normalize else []), device="cpu").save(str(out))
    return out


@pytest.mark.parametrize("mode,normalize", [("mean", True), ("mean", False), ("cls", True), ("cls", False)])
def test_vectors_equal_sentence_transformers(tiny_model, tmp_path, mode, normalize):
    path = variant(tiny_model, tmp_path / "model", mode, normalize)
    model = load_model(str(path), device="cpu")
    expected = {prompt: model.encode(TEXTS, batch_size=4, normalize_embeddings=True, prompt=prompt)
                for prompt in (None, "query: ")}
    unnormalised = model.encode(TEXTS, batch_size=len(TEXTS))
    backend, encoder = onnx_backend.pick_backend("auto", model, path, [], "fp32", token_budget=200)
    assert backend == "onnx"
    # the torch weights are released (the session holds its own copy); the model still tokenizes
    assert {parameter.device.type for parameter in model.parameters()} == {"meta"}
    for prompt in (None, "query: "):
        got = onnx_backend.encode(encoder, TEXTS, 5, prompt)  # other batches than encode's: same vectors
        np.testing.assert_allclose(got, expected[prompt], atol=1e-4, rtol=0)
    # the graph itself is the model's pooling (and Normalize, when it has one): compare before the stage normalises
    features = model.preprocess(TEXTS)
    raw = encoder.session.run(None, {name: features[name].numpy() for name in encoder.inputs})[0]
    np.testing.assert_allclose(raw, unnormalised, atol=1e-4, rtol=0)
    assert np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=1e-5) == normalize


def test_export_is_cached_and_atomic(tiny_model, own_cache, monkeypatch, capsys):
    import torch

    calls = []
    real_export = torch.onnx.export

    def failing(*args, **kwargs):
        calls.append("fail")
        Path(args[2]).write_bytes(b"half a graph")
        raise RuntimeError("interrupted")

    def counting(*args, **kwargs):
        calls.append("export")
        return real_export(*args, **kwargs)

    model = load_model(str(tiny_model), device="cpu")
    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(UsageError, match="torch.onnx.export failed: RuntimeError: interrupted"):
        onnx_backend.pick_backend("onnx", model, tiny_model, [], "fp32")
    assert list((own_cache / "onnx").iterdir()) == []  # nothing half-written is left, not even the temporary folder
    monkeypatch.setattr(torch.onnx, "export", counting)
    assert onnx_backend.pick_backend("auto", model, tiny_model, [], "fp32")[0] == "onnx"
    assert "exported the model to ONNX once" in capsys.readouterr().err
    again = load_model(str(tiny_model), device="cpu")
    expected = again.encode(TEXTS, normalize_embeddings=True)
    backend, encoder = onnx_backend.pick_backend("auto", again, tiny_model, [], "fp32")
    assert backend == "onnx" and calls == ["fail", "export"]  # the second load reuses the export
    assert "exported" not in capsys.readouterr().err
    (folder,) = (own_cache / "onnx").iterdir()
    record = json.loads((folder / onnx_backend.RECORD_FILE).read_text())
    assert record["max_difference"] <= onnx_backend.TOLERANCE and record["texts"] == len(onnx_backend.CHECK_TEXTS)
    np.testing.assert_allclose(onnx_backend.encode(encoder, TEXTS, 8, None), expected, atol=1e-4)
    # the weights live beside the graph (mapped by ONNX Runtime), not inside it: every float of the model is there
    weights = sum(parameter.numel() for parameter in load_model(str(tiny_model), device="cpu").parameters()) * 4
    assert sorted(p.name for p in folder.iterdir()) == sorted([onnx_backend.GRAPH_FILE, onnx_backend.DATA_FILE,
                                                                onnx_backend.RECORD_FILE])
    assert (folder / onnx_backend.DATA_FILE).stat().st_size >= 0.9 * weights > (folder / onnx_backend.GRAPH_FILE).stat().st_size


def test_exports_are_listed_and_pruned(tiny_model, own_cache, tmp_path, capsys):
    """pipeline.cache sees the exports: by the name a run used, by last use (a load counts), and an export of an
    older format (weights inside the graph, no format in its record) or without its record goes with any prune."""
    from pipeline import cache as cache_cli

    other = variant(tiny_model, tmp_path / "cls", "cls", True)
    onnx_backend.pick_backend("auto", load_model(str(tiny_model), device="cpu"), tiny_model, [], "fp32", name="tiny")
    onnx_backend.pick_backend("auto", load_model(str(other), device="cpu"), other, [], "fp32")
    mine, others = sorted(onnx_backend.exports_root().iterdir(), key=lambda f: str(other) in (f / "export.json").read_text())
    legacy = onnx_backend.exports_root() / "0ld"
    legacy.mkdir()
    (legacy / onnx_backend.GRAPH_FILE).write_bytes((mine / onnx_backend.GRAPH_FILE).read_bytes())
    (legacy / onnx_backend.RECORD_FILE).write_text(json.dumps({"max_difference": 1e-7, "texts": 12, "seconds": 1.0}))
    unrecorded = onnx_backend.exports_root() / "b0rken"  # an export's files without its record: no run can use it
    shutil.copytree(mine, unrecorded)
    (unrecorded / onnx_backend.RECORD_FILE).unlink()
    capsys.readouterr()
    assert run_stage(cache_cli, "info") == 0
    out = capsys.readouterr().out
    assert "4 ONNX exports" in out and f"{mine.name[:12]}  tiny:" in out and f"{others.name[:12]}  {other}:" in out
    assert [line.split()[0] for line in out.splitlines() if "outdated" in line] == ["0ld", "b0rken"]
    assert run_stage(cache_cli, "prune", "--cache-dir", own_cache / "embeddings", "--all") == 0  # another cache
    assert "left as they are" in capsys.readouterr().out and legacy.exists()

    past = time.time() - 3 * 86400
    for folder in (mine, others):
        os.utime(folder / onnx_backend.RECORD_FILE, (past, past))
    onnx_backend.pick_backend("auto", load_model(str(tiny_model), device="cpu"), tiny_model, [], "fp32")  # a use
    assert run_stage(cache_cli, "prune", "--older-than", 2) == 0
    assert "removed 3 ONNX exports" in capsys.readouterr().out
    assert sorted(onnx_backend.exports_root().iterdir()) == [mine]
    for not_mine in ("not-this-one", mine.name[:5]):  # a key prefix counts from 6 characters
        assert run_stage(cache_cli, "prune", "--model", not_mine) == 0
        assert mine.exists()
    assert run_stage(cache_cli, "prune", "--model", "tiny") == 0
    assert "removed 1 ONNX exports" in capsys.readouterr().out and list(onnx_backend.exports_root().iterdir()) == []


def test_a_damaged_export_is_refused_in_one_line_and_pruned(tiny_model, own_cache, capsys):
    """An export whose weights file was cut short after its check: one line naming it and how to drop it (the
    session is built on its own thread, so this comes at the first batch), then prune by key and export again."""
    from pipeline import cache as cache_cli

    model = load_model(str(tiny_model), device="cpu")
    expected = model.encode(TEXTS, normalize_embeddings=True)
    onnx_backend.pick_backend("auto", model, tiny_model, [], "fp32")
    (folder,) = onnx_backend.exports_root().iterdir()
    data = folder / onnx_backend.DATA_FILE
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    backend, encoder = onnx_backend.pick_backend("auto", load_model(str(tiny_model), device="cpu"), tiny_model, [], "fp32")
    with pytest.raises(UsageError, match=f"cannot load the export {folder}.*prune --model {folder.name}"):
        onnx_backend.encode(encoder, TEXTS, 4, None)
    assert run_stage(cache_cli, "prune", "--model", folder.name) == 0 and not folder.exists()
    backend, encoder = onnx_backend.pick_backend("auto", load_model(str(tiny_model), device="cpu"), tiny_model, [], "fp32")
    np.testing.assert_allclose(onnx_backend.encode(encoder, TEXTS, 4, None), expected, atol=1e-4)


def test_an_export_without_its_record_is_made_again(tiny_model, own_cache, capsys):
    onnx_backend.pick_backend("auto", load_model(str(tiny_model), device="cpu"), tiny_model, [], "fp32")
    (folder,) = onnx_backend.exports_root().iterdir()
    (folder / onnx_backend.RECORD_FILE).unlink()
    capsys.readouterr()
    assert onnx_backend.pick_backend("auto", load_model(str(tiny_model), device="cpu"), tiny_model, [], "fp32")[0] == "onnx"
    assert "exported the model to ONNX once" in capsys.readouterr().err
    assert (folder / onnx_backend.RECORD_FILE).exists() and list(onnx_backend.exports_root().iterdir()) == [folder]


def test_mismatch_refused_in_one_line(tiny_model, own_cache, monkeypatch, capsys):
    expected = np.random.default_rng(0).normal(size=(12, 32)).astype(np.float32)
    assert onnx_backend.check(expected, expected + 5e-5) <= 1e-4
    for bad, said in ((expected + np.where(np.arange(32) == 7, 2e-4, 0).astype(np.float32), "by 2.00e-04"),
                      (expected * np.nan, "by nan")):
        with pytest.raises(onnx_backend.Unavailable) as refused:
            onnx_backend.check(expected, bad)
        assert said in str(refused.value) and "above 1e-04; not used" in str(refused.value)
        assert "\n" not in str(refused.value)
    # the export applies the check: an export whose vectors come out perturbed by 1e-3 is refused, and not cached
    real_check = onnx_backend.check
    monkeypatch.setattr(onnx_backend, "check", lambda want, got: real_check(want, got + 1e-3))
    model = load_model(str(tiny_model), device="cpu")
    with pytest.raises(UsageError, match=r"^--backend onnx: the ONNX export differs from the torch forward pass by 1.0"):
        onnx_backend.pick_backend("onnx", model, tiny_model, [], "fp32")
    assert onnx_backend.pick_backend("auto", model, tiny_model, [], "fp32") == ("torch", model)
    (said,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("embed:")]
    assert said.startswith("embed: backend torch (the ONNX export differs from the torch forward pass by 1.00e-03")
    assert list((own_cache / "onnx").iterdir()) == []


def test_auto_falls_back_to_torch(tiny_model, monkeypatch, capsys):
    from importlib import metadata

    from sentence_transformers.sentence_transformer.modules import Dense

    model = load_model(str(tiny_model), device="cpu")
    assert onnx_backend.pick_backend("auto", model, tiny_model, [], "bf16")[0] == "torch"
    assert "runs on CPU in fp32 (this run: cpu, bf16)" in capsys.readouterr().err
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: (_ for _ in ()).throw(metadata.PackageNotFoundError(name))
                        if name == "onnxruntime" else real_version(name))
    assert onnx_backend.pick_backend("auto", model, tiny_model, [], "fp32") == ("torch", model)
    assert "onnxruntime is not installed" in capsys.readouterr().err
    monkeypatch.undo()
    model.append(Dense(32, 8))
    assert onnx_backend.pick_backend("auto", model, tiny_model, [], "fp32") == ("torch", model)
    assert "module stack Transformer -> Pooling -> Normalize -> Dense" in capsys.readouterr().err
    with pytest.raises(UsageError, match="--backend onnx: the ONNX backend cannot serve this model"):
        onnx_backend.pick_backend("onnx", model, tiny_model, [], "fp32")


def test_token_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = onnx_backend.token_batches(lengths, batch_size=16, token_budget=1000)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))  # every text exactly once
    flat = lengths[np.concatenate(batches)]
    assert (np.diff(flat) <= 0).all()  # longest first, so batches hold texts of similar length
    for rows in batches:
        assert len(rows) <= 16 and (len(rows) == 1 or len(rows) * lengths[rows].max() <= 1000)
    assert [len(b) for b in onnx_backend.token_batches(np.array([5000, 3, 3]), 16, 1000)] == [1, 2]
    # past ATTENTION_LENGTH tokens the attention scores (rows x L^2) are capped too: rows x L^2 <= budget x 256
    long = np.full(64, 512)
    batches = onnx_backend.token_batches(long, batch_size=64, token_budget=8192)
    assert [len(b) for b in batches] == [8] * 8 and 8 * 512 ** 2 <= 8192 * onnx_backend.ATTENTION_LENGTH
    assert [len(b) for b in onnx_backend.token_batches(np.full(64, 128), 64, 8192)] == [64]  # L <= 256: tokens only


def test_backends_mine_the_same_table(tiny_guide, tmp_path):
    rng = random.Random(1)
    make_pairs(60, seed=3).write_parquet(tmp_path / "pairs.parquet")
    pl.DataFrame({"text": [sentence(rng) for _ in range(80)]}).write_parquet(tmp_path / "corpus.parquet")
    mined = {}
    for backend in ("torch", "onnx"):
        work = tmp_path / backend
        assert run_stage(embed, "--input", tmp_path / "pairs.parquet", "--corpus", tmp_path / "corpus.parquet",
                         "--work", work, "--guide", tiny_guide, "--backend", backend, "--encode-batch-size", 16) == 0
        assert json.loads((work / "embed_plan.json").read_text())["settings"]["backend"] == backend
        assert run_stage(mask, "--work", work, "--k", 20) == 0
        mined[backend] = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")
    ids_torch, vectors_torch = load_embeddings(tmp_path / "torch")
    ids_onnx, vectors_onnx = load_embeddings(tmp_path / "onnx")
    assert (np.sort(ids_torch) == np.sort(ids_onnx)).all()
    np.testing.assert_allclose(vectors_onnx[np.argsort(ids_onnx)], vectors_torch[np.argsort(ids_torch)], atol=1e-4)
    scores = [c for c in mined["torch"].columns if c.endswith("score") or c.endswith("scores") or c == "threshold"]
    assert mined["torch"].drop(scores).equals(mined["onnx"].drop(scores))
    for column in scores:
        np.testing.assert_allclose(mined["onnx"][column].explode().to_numpy(), mined["torch"][column].explode().to_numpy(),
                                   atol=1e-4)
    # the backend is part of the run: another one on the same work directory refuses
    assert run_stage(embed, "--input", tmp_path / "pairs.parquet", "--corpus", tmp_path / "corpus.parquet",
                     "--work", tmp_path / "torch", "--guide", tiny_guide, "--backend", "onnx") == 2
