"""pipeline.mask --update-from: mining again after the input grew equals a full search, and refuses what differs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import make_pairs, run_stage
from test_mask import candidates, mined

from gist_mining import workdir
from gist_mining.workdir import VectorStore, load_embeddings, text_id
from pipeline import embed, mask

K = 12


def embed_run(root: Path, name: str, pairs: pl.DataFrame, corpus: pl.DataFrame, guide) -> Path:
    pairs.write_parquet(root / f"{name}.parquet")
    corpus.write_parquet(root / f"{name}-corpus.parquet")
    assert run_stage(embed, "--input", root / f"{name}.parquet", "--corpus", root / f"{name}-corpus.parquet",
                     "--work", root / name, "--guide", guide, "--texts-per-shard", 40) == 0
    return root / name


def nearest_document(work: Path, query: str, positive: str) -> str:
    """The pool text nearest to ``query`` besides its positive: the first of its candidates."""
    ids, vectors = load_embeddings(work)
    documents = dict(pl.read_parquet(work / "texts.parquet").filter("is_document").select("text_id", "text").iter_rows())
    order = np.argsort(-(vectors @ vectors[ids == text_id(query)][0]))
    return next(documents[i] for i in ids[order] if i in documents and documents[i] != positive)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_guide):
    """An earlier run and a later input: six earlier pairs dropped, new pairs and corpus lines added, and an
    earlier query given two more positives (its exclusions change): a new text, and the text its earlier list
    holds first."""
    root = tmp_path_factory.mktemp("update")
    earlier = make_pairs(80, seed=3)
    corpus = pl.DataFrame({"text": [f"{w} corpus line" for w in ("water", "music", "road", "book", "tree")]})
    earlier_work = embed_run(root, "earlier", earlier, corpus.head(3), tiny_guide)
    # The dropped pairs' texts stay in the pool as corpus lines: the tiny guide lists a few texts for most
    # queries, and one of them leaving would send most anchors to a full search (the next test has texts leave).
    dropped = earlier.head(6)
    corpus = pl.concat([corpus, dropped.select(text="positive"), dropped.select(text="negative").explode("text")])
    nearest = nearest_document(earlier_work, earlier["query"][10], earlier["positive"][10])
    later = pl.concat([earlier.slice(6), make_pairs(25, seed=4),
                       earlier.slice(10, 1).with_columns(pl.col("positive") + " again"),
                       earlier.slice(10, 1).with_columns(positive=pl.lit(nearest))])
    embed_run(root, "later", later, corpus.drop_nulls(), tiny_guide)
    return root


@pytest.fixture
def dirs(runs, tmp_path):
    for name in ("earlier", "later"):
        shutil.copytree(runs / name, tmp_path / name)
    shutil.copytree(runs / "later", tmp_path / "fresh")
    return tmp_path / "earlier", tmp_path / "later", tmp_path / "fresh"


def counts(err: str) -> tuple[int, int]:
    found = re.search(r"(\d+) anchors kept their candidates .* (\d+) searched in full", err)
    return int(found.group(1)), int(found.group(2))


def assert_same_candidates(updated, fresh):
    a, b = candidates(updated), candidates(fresh)
    assert a["anchor_id"].equals(b["anchor_id"]) and a["candidate_ids"].equals(b["candidate_ids"])
    np.testing.assert_allclose(a["candidate_scores"].explode().to_numpy(), b["candidate_scores"].explode().to_numpy(),
                               atol=1e-6)
    assert mined(updated)["negative_ids"].equals(mined(fresh)["negative_ids"])


@pytest.mark.parametrize("index, more", [("flat", []), ("hnsw", []), ("flat", ["--include-queries"])])
def test_update_equals_a_full_search(dirs, index, more, capsys):
    earlier, later, fresh = dirs
    settings = ["--k", K, "--index", index, "--anchors-per-shard", 30, *more]
    assert run_stage(mask, "--work", earlier, *settings) == 0
    assert run_stage(mask, "--work", fresh, *settings) == 0
    capsys.readouterr()
    assert run_stage(mask, "--work", later, "--update-from", earlier, *settings) == 0
    kept, searched = counts(capsys.readouterr().err)
    n_anchors = pl.read_parquet(later / "anchors.parquet").height
    # the new pairs, and the earlier anchors that lost a candidate or changed exclusions, are searched in full
    assert kept + searched == n_anchors and kept > n_anchors / 3 and searched > 25
    assert_same_candidates(later, fresh)
    # No text left the pool: an approximate index is the earlier one with the new texts added (a flat one is built).
    marker = json.loads((later / workdir.INDEX_MARKER).read_text())
    assert marker["extended_from"] == (str(earlier) if index == "hnsw" else None)
    assert marker["vectors"] == len(workdir.candidate_pool(later, bool(more)))
    # Each shard read only the earlier lists of its own queries, split out in one pass.
    anchors = pl.read_parquet(later / "anchors.parquet").with_columns(shard=pl.col("anchor_id") // 30)
    for path in (later / workdir.EARLIER).glob("*.parquet"):
        shard = int(path.stem.removeprefix("shard-"))
        assert set(pl.read_parquet(path)["query_id"]) <= set(anchors.filter(shard=shard)["query_id"])
    assert len(list((later / workdir.EARLIER).glob("*.parquet"))) == anchors["shard"].n_unique()
    # The plan's fingerprint holds the earlier search: the same settings without --update-from are another plan.
    assert run_stage(mask, "--work", later, *settings) == 2
    assert "other --update-from" in capsys.readouterr().err


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_a_text_whose_vector_differs_counts_as_left_and_new(dirs, index, capsys, monkeypatch):
    earlier, later, fresh = dirs
    settings = ["--k", K, "--index", index]
    assert run_stage(mask, "--work", earlier, *settings) == 0
    assert run_stage(mask, "--work", later, "--update-from", earlier, *settings) == 0
    kept_before, _ = counts(capsys.readouterr().err)
    # The earlier run mined again, reading three pool texts its lists hold (the least listed ones) and five of
    # its queries that the later input keeps differently.
    listed = candidates(earlier)["candidate_ids"].explode().value_counts(sort=True)["candidate_ids"].tail(3)
    changed = set(listed.to_list()) | set(candidates(earlier)["query_id"].slice(20, 5).to_list())
    get = VectorStore.get

    def earlier_differs(store, ids):
        vectors = get(store, ids)
        if store.path.is_relative_to(earlier):
            vectors[np.isin(np.asarray(ids), list(changed))] *= 1.01  # (not a shift: the vectors sum to ~0)
        return vectors

    monkeypatch.setattr(VectorStore, "get", earlier_differs)
    for work in (earlier, later):
        workdir.remove_steps(work, "search")
    assert run_stage(mask, "--work", earlier, *settings) == 0
    assert run_stage(mask, "--work", fresh, *settings) == 0
    assert run_stage(mask, "--work", later, "--update-from", earlier, *settings) == 0
    kept, _ = counts(capsys.readouterr().err)
    assert kept < kept_before
    assert_same_candidates(later, fresh)
    assert json.loads((later / workdir.INDEX_MARKER).read_text())["extended_from"] is None  # texts left the pool


def test_what_would_make_other_lists_is_refused(dirs, runs, tiny_model, capsys):
    earlier, later, _ = dirs
    assert run_stage(mask, "--work", earlier, "--k", K) == 0
    assert run_stage(mask, "--work", later, "--update-from", earlier, "--k", K + 1) == 2
    assert "made with another --k" in capsys.readouterr().err
    assert run_stage(mask, "--work", later, "--update-from", later, "--k", K) == 2
    assert "that is --work itself" in capsys.readouterr().err
    other = runs / "other-guide"
    assert run_stage(embed, "--input", runs / "later.parquet", "--work", other, "--guide", tiny_model) == 0
    assert run_stage(mask, "--work", other, "--update-from", earlier, "--k", K) == 2
    assert "another guide model" in capsys.readouterr().err
    assert run_stage(mask, "--work", later, "--update-from", earlier, "--refilter") == 2
