"""The GIST-small recipe as one command (pipeline.run --recipe gist-small), end to end offline: a tiny MEDI-shaped
data set from a fake Hub cache at a revision, tiny random guide and student in place of the recipe's names."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from conftest import paper_batches, run_stage
from medi_hub import REPO, REVISION, medi_rows, serve, use_cache

from gist_mining import workdir
from pipeline import run as job


def parsed(*argv):
    parser = job.build_parser()
    recipe = job.apply_recipe(parser, list(argv))
    return recipe, parser.parse_args(list(argv)), parser


def test_the_recipe_sets_the_papers_settings_and_options_still_win():
    recipe, args, parser = parsed("--recipe", "gist-small")
    dests = {action.dest for action in parser._actions}
    assert set(recipe.defaults(cuda=False)) <= dests  # every default lands on an option
    assert (args.input, args.input_revision, args.guide, args.student) == (
        None, "238a0499b6e6b690cc64ea56fde8461daa8341bb", "WhereIsAI/UAE-Large-V1", "BAAI/bge-small-en-v1.5")
    assert (args.negatives_from, args.margin_strategy, args.margin, args.task_batching) == ("given", "absolute", 0.0,
                                                                                            "paper")
    assert (args.temperature, args.lr, args.warmup_ratio, args.batch_size, args.epochs, args.max_steps,
            args.max_seq_length) == (0.01, 5e-6, 0.1, 16, 40.0, None, 512)
    assert (args.in_batch_margin_strategy, args.in_batch_margin, args.instructions) == ("absolute", 0.0, "drop")
    _, given, _ = parsed("--recipe", "gist-small", "--epochs", "2", "--student", "other")
    assert (given.epochs, given.student, given.lr) == (2.0, "other", 5e-6)
    _, plain, _ = parsed()
    assert (plain.lr, plain.max_steps, plain.negatives_from) == (2e-5, 60, "corpus")  # the demo, unchanged
    _, base, _ = parsed("--recipe", "gist-base")
    assert (base.student, base.batch_size, base.epochs) == ("BAAI/bge-base-en-v1.5", 32, 80.0)


def test_gist_small_end_to_end_from_a_fake_hub(tmp_path, monkeypatch, tiny_model, tiny_guide, capsys):
    rows = medi_rows()
    serve(tmp_path / "hf", rows)
    use_cache(tmp_path / "hf", monkeypatch)
    work = tmp_path / "work"
    # The recipe's names substituted: the data set (its revision given, as the recipe gives its own), the guide and
    # the student; the tiny models read 64 tokens at most; 3 epochs instead of 40.
    assert run_stage(job, "--recipe", "gist-small", "--input", REPO, "--input-revision", REVISION, "--guide",
                     tiny_guide, "--student", tiny_model, "--max-seq-length", 64, "--epochs", 3, "--work", work) == 0
    captured = capsys.readouterr()
    assert "instructions dropped" in captured.err
    assert f"mteb run -m {work / 'models' / 'gist-small'} -b 'MTEB(eng, v1)'" in captured.out
    assert "avsolatorio/GIST-small-Embedding-v0: 62.48 / 50.43" in captured.out

    embed_plan = json.loads((work / "embed_plan.json").read_text())
    assert f"snapshots/{REVISION}/" in embed_plan["inputs"][0]["path"]  # the revision's files
    mined = pl.read_parquet(work / "mined" / "*.parquet").sort("anchor_id")
    assert mined.height == rows.height and mined["n_candidates"].sum() == 0  # the given negatives only
    manifest = json.loads((work / workdir.MINED_MANIFEST).read_text())
    assert {k: manifest["rules"][k] for k in ("negatives_from", "margin_strategy", "margin")} == {
        "negatives_from": "given", "margin_strategy": "absolute", "margin": 0.0}

    out = work / "models" / "gist-small"
    record = json.loads((out / workdir.TRAINING_RECORD).read_text())
    settings = record["settings"]
    assert {k: settings[k] for k in ("temperature", "lr", "warmup_ratio", "batch_size", "task_batching", "precision",
                                     "negatives_per_anchor")} == {
        "temperature": 0.01, "lr": 5e-6, "warmup_ratio": 0.1, "batch_size": 16, "task_batching": "paper",
        "precision": "fp32", "negatives_per_anchor": 1}  # fp32: no CUDA here
    assert settings["save_steps"] == 102_000  # the published checkpoint's step is kept
    assert settings["keep_checkpoints"] == 0  # and no later checkpoint removes it
    assert settings["student"]["name"] == str(tiny_model) and settings["student"]["max_seq_length"] == 64
    # sorted by task: eli5 rows 0-8, banking 9-48, quora 49-59; of the chunks of 16, rows 16-31 and 32-47 are of one
    # task: two batches an epoch
    tasks = mined["task"].to_list()
    assert record["steps"] == 3 * len(paper_batches(tasks, 16, seed=42, epoch=0)[0]) == 6
    assert Path(out / "config_sentence_transformers.json").exists()
