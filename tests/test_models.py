"""Models by name, local directory or Hugging Face id (through a fake HF cache: no Hub here), and fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, make_pairs, run_module, run_stage

from gist_mining import models

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def add_snapshot(hub: Path, repo_id: str, commit: str, model_dir: Path, ref: str | None = None) -> Path:
    """Lay model_dir out the way huggingface_hub does: content-addressed blobs/, refs/<branch> holding a commit,
    and snapshots/<commit>/ of relative symlinks into blobs/."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def fake_hub(tmp_path, monkeypatch, tiny_model, tiny_guide):
    """HF_HOME with fake-org/tiny: main -> COMMIT_A (tiny_model), and COMMIT_B (tiny_guide) on no branch."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    snapshots = {COMMIT_A: add_snapshot(home / "hub", "fake-org/tiny", COMMIT_A, tiny_model, ref="main"),
                 COMMIT_B: add_snapshot(home / "hub", "fake-org/tiny", COMMIT_B, tiny_guide)}
    monkeypatch.setenv("HF_HOME", str(home))  # for subprocesses: huggingface_hub reads it once, at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))  # for this process
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    models._hub_snapshot.cache_clear()
    yield snapshots
    models._hub_snapshot.cache_clear()


def stored_vectors(work: Path) -> tuple[list[str], np.ndarray]:
    rows = (pl.read_parquet(work / "texts.parquet").join(pl.read_parquet(work / "embeddings" / "*.parquet"), on="text_id")
            .sort("text_id"))
    return rows["text"].to_list(), np.array(rows["embedding"].to_list(), dtype=np.float32)


@pytest.mark.parametrize("revision", [pytest.param(None, marks=pytest.mark.slow), COMMIT_B])  # None: a fresh process
def test_embed_takes_a_hub_id_from_the_cache(tmp_path, fake_hub, revision):
    from sentence_transformers import SentenceTransformer

    from pipeline import embed

    make_pairs(12).write_parquet(tmp_path / "pairs.parquet")
    args = ["--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", "fake-org/tiny"]
    if revision is None:  # a fresh process, to show HF_HOME is honoured as huggingface_hub reads it
        run_module("pipeline.embed", *args)
    else:  # in this process, through the patched cache constants
        assert run_stage(embed, *args, "--revision", revision) == 0
    texts, vectors = stored_vectors(tmp_path / "w")
    commit = revision or COMMIT_A  # no revision: the commit refs/main names
    expected = SentenceTransformer(str(fake_hub[commit]), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    manifest = json.loads((tmp_path / "w" / "embed_manifest.json").read_text())
    assert manifest["model"]["name"] == "fake-org/tiny" and manifest["model"]["revision"] == commit


def test_a_revision_resolves_through_refs_and_commits(tmp_path, fake_hub, tiny_model):
    for revision, commit in ((None, COMMIT_A), ("main", COMMIT_A), (COMMIT_B, COMMIT_B)):
        assert models.resolve_model("fake-org/tiny", revision).resolve() == fake_hub[commit].resolve()
    # With a revision, a bundled name means that version on the Hub, not the bundled package.
    add_snapshot(tmp_path / "hf" / "hub", "sentence-transformers/all-MiniLM-L6-v2", COMMIT_B, tiny_model)
    assert models.snapshot_commit(models.resolve_model("sentence-transformers/all-MiniLM-L6-v2", COMMIT_B)) == COMMIT_B


def uncached_failure(tmp_path, capsys) -> tuple[int, list[str], float]:
    make_pairs(4).write_parquet(tmp_path / "pairs.parquet")
    from pipeline import embed

    started = time.perf_counter()
    status = run_stage(embed, "--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w",
                       "--guide", "fake-org/absent", "--revision", "v2")
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith(("error:", "embed: ")) for line in lines)  # besides the error, which columns were taken
    return status, [line for line in lines if line.startswith("error:")], time.perf_counter() - started


def test_an_uncached_id_offline_fails_fast_with_the_fetch_recipe(tmp_path, fake_hub, capsys):
    status, lines, seconds = uncached_failure(tmp_path, capsys)
    assert status == 2 and len(lines) == 1 and seconds < 5
    assert "'fake-org/absent'" in lines[0] and "HF_HUB_OFFLINE is set" in lines[0]
    assert "no such directory, not a bundled name (all-MiniLM-L6-v2, all-mpnet-base-v2)" in lines[0]
    assert f"not in the Hugging Face cache at {tmp_path / 'hf' / 'hub'}" in lines[0]
    assert "hf download fake-org/absent --revision v2" in lines[0] and "pass DIR as the model" in lines[0]
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_a_hub_that_never_answers_is_given_up_on_after_the_timeout(tmp_path, fake_hub, capsys, monkeypatch):
    from huggingface_hub import constants

    server = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    server.bind(("127.0.0.1", 0))
    server.listen()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    try:
        status, lines, seconds = uncached_failure(tmp_path, capsys)
    finally:
        server.close()
    assert status == 2 and len(lines) == 1 and seconds < 5
    assert "the Hub cannot be reached" in lines[0] and "hf download fake-org/absent" in lines[0]


def test_the_hub_is_asked_when_online_and_a_cached_snapshot_serves_when_it_cannot_answer(fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")  # refused at once
    assert models.resolve_model("fake-org/tiny").resolve() == fake_hub[COMMIT_A].resolve()


@pytest.mark.parametrize("name", ["./no-such-dir", "/no/such/dir", "a/b/c"])
def test_a_name_that_is_nothing_says_so(name):
    with pytest.raises(models.UsageError, match="no such directory, not a bundled name"):
        models.resolve_model(name)


def test_revision_is_refused_for_a_local_directory(tiny_model):
    with pytest.raises(models.UsageError, match="--revision selects a version of a Hugging Face model id"):
        models.resolve_model(str(tiny_model), "main")


# -- fingerprints ----------------------------------------------------------------------------------------


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps(dict(json.loads(path.read_text()), **changes)))


def edit_tokenizer_vocabulary(model: Path) -> None:
    path = model / "tokenizer.json"
    path.write_text(path.read_text().replace('"river"', '"rivet"'))


EDITS = {
    "tokenizer file": edit_tokenizer_vocabulary,
    "max_seq_length": lambda m: edit_json(m / "tokenizer_config.json", model_max_length=32),
    "pooling mode": lambda m: edit_json(m / "1_Pooling" / "config.json", pooling_mode="cls"),
    "prompt in config": lambda m: edit_json(m / "config_sentence_transformers.json",
                                            prompts={"query": "query: ", "document": ""}, default_prompt_name="query"),
    "model config": lambda m: edit_json(m / "config.json", layer_norm_eps=1e-3),
}


def fingerprint_of(path: Path, **load) -> dict:
    return models.model_fingerprint(models.load_model(str(path), device="cpu", **load), path)


@pytest.fixture(scope="module")
def base_fingerprint(tiny_model) -> dict:
    return fingerprint_of(tiny_model)


@pytest.mark.parametrize("what", list(EDITS))
def test_fingerprint_changes_with_every_file_that_decides_the_embeddings(tmp_path, tiny_model, base_fingerprint, what):
    copy = Path(shutil.copytree(tiny_model, tmp_path / "copy"))
    assert fingerprint_of(copy) == base_fingerprint  # the same files elsewhere: the same model
    EDITS[what](copy)
    assert fingerprint_of(copy)["fingerprint"] != base_fingerprint["fingerprint"]


def test_fingerprint_changes_with_loaded_settings_precision_and_revision(tmp_path, tiny_model, base_fingerprint):
    import torch

    assert fingerprint_of(tiny_model, max_seq_length=16)["max_seq_length"] == 16
    model = models.load_model(str(tiny_model), device="cpu").to(torch.bfloat16)
    assert models.model_fingerprint(model, tiny_model)["precision"] == "torch.bfloat16"
    seen = {base_fingerprint["fingerprint"], fingerprint_of(tiny_model, max_seq_length=16)["fingerprint"],
            models.model_fingerprint(model, tiny_model)["fingerprint"]}
    for commit in (COMMIT_A, COMMIT_B):  # the same files under two commits
        snapshot = add_snapshot(tmp_path / "hub", "fake-org/tiny", commit, tiny_model)
        info = fingerprint_of(snapshot)
        assert info["revision"] == commit and info["weights_sha256"] == base_fingerprint["weights_sha256"]
        seen.add(info["fingerprint"])
    assert len(seen) == 5


def test_weights_are_hashed_once_per_file_version(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("GIST_MINING_CACHE", str(tmp_path / "cache"))
    model = models.load_model(str(tiny_model), device="cpu")
    first = models.model_fingerprint(model, tiny_model)
    hashed = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    assert models.model_fingerprint(model, tiny_model) == first
    assert hashed and not [name for name in hashed if name.endswith(models.WEIGHT_SUFFIXES)]


# -- remote code and the network ---------------------------------------------------------------------------


def with_own_code(tiny_model: Path, where: Path) -> Path:
    """A copy of the tiny model whose config names a model class in a Python file of its own."""
    copy = Path(shutil.copytree(tiny_model, where))
    (copy / "custom_bert.py").write_text(
        "from transformers import BertConfig, BertModel\n\n\n"
        "class TinyConfig(BertConfig):\n    model_type = 'gist-tiny-bert'\n\n\n"
        "class TinyModel(BertModel):\n    config_class = TinyConfig\n")
    edit_json(copy / "config.json", model_type="gist-tiny-bert",
              auto_map={"AutoConfig": "custom_bert.TinyConfig", "AutoModel": "custom_bert.TinyModel"})
    return copy


@pytest.mark.slow
def test_model_code_runs_only_with_trust_remote_code(tmp_path, tiny_model, capsys, monkeypatch):
    from pipeline import embed
    from train import run as train_command

    for parse in (lambda *a: embed.build_parser().parse_args(["--input", "x", "--work", "w", *a]),
                  lambda *a: train_command.build_parser().parse_args(["--work", "w", "--out", "o", *a])):
        assert parse().trust_remote_code is False and parse("--trust-remote-code").trust_remote_code is True
    model = with_own_code(tiny_model, tmp_path / "own-code")
    make_pairs(6).write_parquet(tmp_path / "pairs.parquet")
    args = ["--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", model]
    assert run_stage(embed, *args) == 2
    (line,) = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("embed: ")]
    assert "ships its own Python code" in line and "--trust-remote-code" in line
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # where transformers copies the model's code
    run_module("pipeline.embed", *args, "--trust-remote-code")
    assert (tmp_path / "w" / "embed_manifest.json").exists()


@pytest.mark.slow
def test_bundled_and_local_models_never_touch_the_network(tmp_path, tiny_model):
    """HF_HUB_OFFLINE is no longer set for the user; loading, fingerprinting and saving stay off the network."""
    script = f"""
import socket
attempts = []
def refuse(*args, **kwargs):  # recorded, since libraries swallow errors from optional lookups
    attempts.append(args)
    raise OSError("no network in this test")
socket.socket.connect = socket.getaddrinfo = refuse
from gist_mining import models
for name in ({str(tiny_model)!r}, models.DEFAULT_STUDENT):
    model = models.load_model(name, device="cpu")
    models.model_fingerprint(model, models.resolve_model(name))
    model.encode(["a few words"])
model.save({str(tmp_path / "saved")!r})
print(attempts or "ok")
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), GIST_MINING_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
