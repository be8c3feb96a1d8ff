"""One command line over typed stage functions: the parsers agree on every option they share, the console script
is the modules' own parsers, the Python API writes what the command line writes, and a step runs where it is
unpickled."""

from __future__ import annotations

import argparse
import pickle
import shutil
import subprocess
import sys
from dataclasses import fields
from importlib.util import find_spec

import pytest
from conftest import ROOT, make_pairs, run_stage

from gist_mining import workdir
from gist_mining.embed import EmbedOptions
from gist_mining.embed import embed as embed_stage
from gist_mining.embed.step import EmbedStep
from gist_mining.errors import UsageError
from gist_mining.executor import ExecutorSettings, run_locally, run_step
from gist_mining.mask import SearchSettings
from gist_mining.mask.mine_step import MineStep
from gist_mining.mining import MiningRules
from gist_mining.models import ModelSettings
from gist_mining.settings import dest_of
from pipeline import cache, embed, evaluate, export, mask, report
from pipeline import cli as console
from pipeline import run as job
from train import run as train_command

PARSERS = {"embed": embed.build_parser(), "mask": mask.build_parser(), "train": train_command.build_parser(),
           "export": export.build_parser(), "report": report.build_parser(), "run": job.build_parser(),
           "evaluate": evaluate.build_parser(),
           **{f"cache {name}": sub for name, sub in next(a for a in cache.build_parser()._actions
                                                         if isinstance(a, argparse._SubParsersAction)).choices.items()}}
# Spellings retired for the one that every stage now uses (tests/test_cli.py keeps them from coming back).
RETIRED = {"--num-negatives": "--negatives-per-anchor", "--shard-size": "--texts-per-shard / --anchors-per-shard",
           "--steps": "--max-steps", "--bf16": "--precision bf16"}
# Options whose default is a stage's own on purpose, and why.
STAGE_DEFAULTS = {"--negatives-per-anchor": "mask mines 3; export takes the mining run's (None)"}


SEARCH_DEFAULTS = {dest_of(f): f.default for f in fields(SearchSettings)}


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings if flag not in ("-h", "--help")}


def test_an_option_shared_by_stages_has_one_meaning():
    seen: dict[str, dict[str, tuple]] = {}
    for stage, parser in PARSERS.items():
        for flag, action in options(parser).items():
            default = action.default
            if stage == "run" and action.dest in job.DEMO_DEFAULTS:
                default = train_command.build_parser().get_default(action.dest)  # the demo's shorter run, said in one place
            if stage == "mask" and action.dest in SEARCH_DEFAULTS:
                default = SEARCH_DEFAULTS[action.dest]  # parsed as None so that --refilter sees what was given
            seen.setdefault(flag, {})[stage] = (action.dest, action.type, type(action).__name__, action.nargs,
                                                repr(None if flag in STAGE_DEFAULTS else default))
    drift = {flag: by_stage for flag, by_stage in seen.items() if len(set(by_stage.values())) > 1}
    assert drift == {}


def test_retired_spellings_are_gone_and_the_model_options_name_their_model():
    flags = {stage: set(options(parser)) for stage, parser in PARSERS.items()}
    assert [(stage, old) for stage, f in flags.items() for old in RETIRED if old in f] == []
    assert "--batch-size" not in flags["embed"]  # texts per forward pass: --encode-batch-size
    assert "--guide" in flags["embed"] and "--student" in flags["train"] and {"--guide", "--student"} <= flags["run"]
    assert [stage for stage in ("embed", "mask", "train", "run") if "--model" in flags[stage]] == []
    assert {"--margin", "--margin-strategy"} & flags["train"] == set()  # the in-batch rule has its own names
    assert {"--in-batch-margin", "--in-batch-margin-strategy"} <= flags["train"]
    # how many are mined (mask, export) and how many of those train: two flags
    assert "--negatives-per-anchor" not in flags["train"] and "--negatives-in-batch" in flags["train"]


def test_help_says_every_default():
    for stage, parser in PARSERS.items():
        for flag, action in options(parser).items():
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            assert action.help and "default" in parser.formatter_class(stage)._get_help_string(action), \
                f"{stage} {flag}: --help does not say its default {action.default!r}"


def test_pipeline_run_takes_the_stages_options():
    run_flags = set(options(PARSERS["run"]))
    for needed in ("--query-prompt", "--document-prompt-name", "--precision", "--margin-strategy", "--k",
                   "--negatives-per-anchor", "--negatives-in-batch", "--in-batch-margin", "--executor", "--texts-per-shard"):
        assert needed in run_flags


def gist_mining(*args: str) -> subprocess.CompletedProcess:
    """The console script, as ``python -m pipeline.cli`` runs it (the library has no __main__: it imports no command)."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow  # fresh interpreters
def test_console_script_lists_the_stages_and_runs_their_parsers():
    listing = gist_mining("--help")
    assert listing.returncode == 0
    lines = listing.stdout.splitlines()
    for name, module in console.COMMANDS.items():
        (line,) = [line for line in lines if line.startswith(f"  {name} ")]
        assert line.split(None, 1)[1] == console._first_line(module)
    assert gist_mining("--version").stdout.strip() == "gist-mining 0.1.0"
    for name, module in (("mask", mask), ("train", train_command)):
        shown = gist_mining(name, "--help")
        assert shown.returncode == 0 and shown.stdout.startswith(f"usage: gist-mining {name} ")
        assert shown.stdout.split("\n\n", 1)[1] == module.build_parser().format_help().split("\n\n", 1)[1]
    wrong = gist_mining("mask", "--work", "nowhere")
    assert wrong.returncode == 2 and wrong.stderr.strip().count("\n") == 0 and "embed_manifest.json" in wrong.stderr


def test_console_script_entry_resolves():
    tomllib = pytest.importorskip("tomllib")
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["gist-mining"]
    module, function = entry.split(":")
    assert getattr(__import__(module, fromlist=[function]), function) is console.main


def test_ray_executor_options_are_checked_first_and_a_missing_ray_is_one_line(tmp_path, capsys):
    assert run_stage(mask, "--work", tmp_path, "--executor", "ray", "--num-shards", 2) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "drop --num-shards" in line  # before the work directory is read
    if find_spec("ray") is None:
        step = MineStep(workdir.Shards(tmp_path, workdir.MINED, 1, "f"), workdir.Shards(tmp_path, "c", 1, "f"),
                             MiningRules())
        with pytest.raises(UsageError, match="ray"):
            run_step(step, ExecutorSettings(executor="ray"))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    make_pairs(40, seed=11).write_parquet(root / "pairs.parquet")
    return root / "pairs.parquet"


def shard_bytes(work, folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted((work / folder).glob("shard-*.parquet"))}


def test_python_api_writes_what_the_command_line_writes(pairs, tmp_path, tiny_guide, tiny_model):
    cli_work, api_work = tmp_path / "cli", tmp_path / "api"
    assert run_stage(embed, "--input", pairs, "--work", cli_work, "--guide", tiny_guide, "--texts-per-shard", 30,
                     "--query-prompt", "q: ", "--no-cache") == 0
    assert run_stage(mask, "--work", cli_work, "--k", 8, "--anchors-per-shard", 15, "--negatives-per-anchor", 2) == 0
    assert run_stage(train_command, "--work", cli_work, "--out", cli_work / "m", "--student", tiny_model, "--max-steps", 2,
                     "--batch-size", 8) == 0
    from gist_mining import api

    # paths as strings, as a notebook would give them
    embedded = api.embed([str(pairs)], str(api_work), api.ModelSettings(str(tiny_guide)),
                         api.EmbedOptions(texts_per_shard=30, no_cache=True), api.Prompts(query_prompt="q: "))
    mined = api.mask(str(api_work), api.SearchSettings(k=8, shard_size=15), api.MiningRules(num_negatives=2))
    api.train(str(api_work), str(api_work / "m"), api.TrainConfig(student=api.ModelSettings(str(tiny_model)),
                                                                  max_steps=2, batch_size=8))
    assert embedded.fingerprint == workdir.checked_embed_manifest(cli_work).fingerprint
    assert mined.fingerprint == workdir.checked_mined_manifest(cli_work).fingerprint
    for folder in (workdir.EMBEDDINGS, workdir.CANDIDATES, workdir.MINED):
        assert shard_bytes(api_work, folder) == shard_bytes(cli_work, folder)
    assert (api_work / "m" / "model.safetensors").read_bytes() == (cli_work / "m" / "model.safetensors").read_bytes()
    # the plan records the command line that rebuilds it, whichever made it
    recorded = workdir.read_plan(api_work, "embed")["command"]
    assert recorded == workdir.read_plan(cli_work, "embed")["command"].replace(str(cli_work), str(api_work))
    assert recorded.startswith("python -m pipeline.embed --input ") and "--query-prompt 'q: '" in recorded


def test_an_unpickled_step_loads_its_own_model_and_writes_the_same_shard(pairs, tmp_path, tiny_guide, tiny_model):
    work = tmp_path / "w"
    embed_stage([pairs], work, ModelSettings(str(tiny_guide)), EmbedOptions(texts_per_shard=30, no_cache=True))
    plan = workdir.EmbedPlan.from_json(workdir.read_plan(work, "embed"))
    shards = workdir.Shards(work, workdir.EMBEDDINGS, len(plan.bounds), plan.fingerprint)
    reference = shard_bytes(work, workdir.EMBEDDINGS)
    shutil.rmtree(work / workdir.EMBEDDINGS)
    (work / workdir.EMBED_MANIFEST).unlink()
    step = EmbedStep(shards, plan, ModelSettings(str(tiny_guide)), 64, loaded=object())  # a driver's model
    remote = pickle.loads(pickle.dumps(step))
    assert remote.loaded is None  # never travels
    run_locally(remote, ExecutorSettings())
    assert shard_bytes(work, workdir.EMBEDDINGS) == reference
    elsewhere = EmbedStep(shards, plan, ModelSettings(str(tiny_model)), 64)  # a worker with other files
    (work / workdir.EMBEDDINGS / workdir.shard_name(0)).unlink()
    with pytest.raises(UsageError, match="another model than the plan's"):
        run_locally(pickle.loads(pickle.dumps(elsewhere)), ExecutorSettings())


@pytest.mark.slow
def test_the_main_job_takes_a_guide_with_a_query_prompt(pairs, tmp_path, tiny_guide, tiny_model, capsys):
    """pipeline.run passes the stages' options on (a bge-style guide's query prompt, mining rules, the trainer's
    settings): its work directory and student are what the stages write when run one by one."""
    import polars as pl
    from conftest import eval_split

    split = eval_split(tmp_path, pl.read_parquet(pairs).head(12))
    work = tmp_path / "job"
    assert run_stage(job, "--input", pairs, "--eval", split, "--work", work, "--guide", tiny_guide, "--student",
                     tiny_model, "--query-prompt", "q: ", "--margin", 0.1, "--texts-per-shard", 30, "--max-steps", 2,
                     "--batch-size", 8, "--no-cache") == 0
    plan = workdir.read_plan(work, "embed")
    assert plan["settings"]["query_prompt"] == "q: " and plan["settings"]["shard_size"] == 30
    assert workdir.checked_mined_manifest(work).rules.margin == 0.1
    results = (work / workdir.RESULTS).read_text()
    assert all(name in results for name in ("base", "plain", "gist"))
    # Another mining rule: the job refuses, and with --overwrite redoes the mining alone (embeddings resumed).
    def again(margin, *more):
        return run_stage(job, "--input", pairs, "--eval", split, "--work", work, "--guide", tiny_guide, "--student",
                         tiny_model, "--query-prompt", "q: ", "--margin", margin, "--texts-per-shard", 30,
                         "--max-steps", 2, "--batch-size", 8, "--no-cache", *more)

    def vectors():
        return {p: p.stat().st_mtime_ns for p in (work / workdir.VECTORS).rglob("*") if p.is_file()}

    embedded = vectors()
    assert again(0.2) == 2 and workdir.checked_mined_manifest(work).rules.margin == 0.1
    assert again(0.2, "--overwrite") == 0 and workdir.checked_mined_manifest(work).rules.margin == 0.2
    assert embedded and vectors() == embedded
    assert again(0.1, "--overwrite") == 0  # back, for the comparison with the stages run alone below
    # A rerun: every stage done; the two students, complete and made from the same mined tables, are not retrained.
    students = {p: p.stat().st_mtime_ns for p in (work / workdir.MODELS).rglob("*") if p.is_file()}
    capsys.readouterr()
    assert again(0.1) == 0
    assert capsys.readouterr().err.count("is complete (2 steps, from the same mined tables and settings); nothing to do") == 2
    assert students and {p: p.stat().st_mtime_ns for p in (work / workdir.MODELS).rglob("*") if p.is_file()} == students
    alone = tmp_path / "alone"
    assert run_stage(embed, "--input", pairs, "--work", alone, "--guide", tiny_guide, "--query-prompt", "q: ",
                     "--texts-per-shard", 30, "--no-cache") == 0
    assert run_stage(mask, "--work", alone, "--margin", 0.1) == 0
    assert shard_bytes(alone, workdir.MINED) == shard_bytes(work, workdir.MINED)
    assert run_stage(train_command, "--work", alone, "--out", alone / "gist", "--student", tiny_model, "--max-steps", 2,
                     "--batch-size", 8) == 0
    model = "model.safetensors"
    assert (alone / "gist" / model).read_bytes() == (work / workdir.MODELS / "gist" / model).read_bytes()
