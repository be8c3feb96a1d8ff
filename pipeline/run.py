"""The main job: raw pairs -> guide embeddings -> mined negatives -> GIST and plain fine-tuning -> held-out table.

    python -m pipeline.run                       # the bundled data sets, bundled guide and student
    python -m pipeline.run --input my_pairs.parquet --eval my_split/ --work runs/mine --max-steps 500
    python -m pipeline.run --input my_pairs.parquet --eval my_split/ --guide BAAI/bge-base-en-v1.5 \\
        --query-prompt 'Represent this sentence for searching relevant passages: '

Each stage is the same command a user can run alone (pipeline.embed, pipeline.mask, train.run), and each
is resumable: rerunning after an interruption skips what is done. Prints and saves (results.json) the
held-out NDCG@10, MRR@10 and Recall@100 of the base student, of the student fine-tuned without the guide
filter and of the student fine-tuned with it: same steps, data, negatives and seed.

By default it runs twice: on the retrieval sample (data/sample: definitions and docstrings, where in-batch
false negatives are rare) and on the classification-style sections task (data/sections: every other
same-section text in a batch is a false negative), so the table shows where the guide's filter matters.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from gist_mining import cli, evaluation, recipes, workdir
from gist_mining.embed import EmbedOptions, InputOptions, embed
from gist_mining.errors import UsageError
from gist_mining.executor import ExecutorSettings
from gist_mining.mask import SearchSettings, mask
from gist_mining.mining import MiningRules
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, ModelSettings, Prompts, add_prompt_options
from gist_mining.settings import HelpFormatter, add_options, from_args
from gist_mining.storage import write_json_atomic
from gist_mining.training import TrainConfig, train

DATA = Path(__file__).resolve().parents[1] / "data"
BUNDLED = ("sample", "sections")  # data/NAME/train.parquet and data/NAME/test/, work directory runs/NAME
# Where the main job's defaults differ from a stage's (tests/test_cli.py allows exactly these): a short demo.
DEMO_DEFAULTS = {"max_steps": 60}
# TrainConfig fields the job leaves at their defaults: it evaluates the three students after training, on --eval;
# --precision is the embed group's, for every stage; --overwrite the job's own, for every stage.
NOT_PASSED_TO_TRAIN = ("eval", "eval_steps", "save_steps", "resume", "overwrite")
EVALUATION = "evaluation"  # in the work directory: the held-out table (results.parquet, .md, .png), kept results


def build_parser(prog: str = "python -m pipeline.run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--input", action="append", default=None,
                   help=f"pairs (default: each of {', '.join(BUNDLED)} in {DATA}, in turn)")
    p.add_argument("--eval", type=Path, default=None, help="held-out retrieval split (with --input): a folder in "
                                                            "BEIR's layout or the bundled sets'")
    p.add_argument("--work", type=Path, default=None, help="work directory (with --input; default runs/NAME)")
    p.add_argument("--recipe", choices=recipes.RECIPES, default=None,
                   help="a published model's training: its data set, models and settings as the defaults of every "
                        "option (options given still win); one student, trained with the guide (gist_mining.recipes)")
    # A retrieval layout (--queries/--qrels) is pipeline.embed's: the job's held-out split is --eval.
    add_options(p.add_argument_group("input"), InputOptions, exclude=("queries", "qrels"))
    models = p.add_argument_group("models (--revision, --trust-remote-code, --device and --max-seq-length apply to "
                                  "both; the prompts to the guide, the student keeps its own)")
    models.add_argument("--guide", default=DEFAULT_GUIDE, help="bundled name, local directory or HF id")
    models.add_argument("--student", default=DEFAULT_STUDENT, help="bundled name, local directory or HF id")
    add_options(models, ModelSettings)
    add_prompt_options(models)
    add_options(p.add_argument_group("embed"), EmbedOptions, exclude=("overwrite",))
    # One flag for every stage (EmbedOptions reads it too): a stage made as this run would make it still resumes;
    # only what differs is redone.
    p.add_argument("--overwrite", action="store_true",
                   help="redo each stage whose work directory state was made with other inputs, settings or rules "
                        "(and everything made from it); without it such a stage refuses")
    add_options(p.add_argument_group("search"), SearchSettings)
    add_options(p.add_argument_group("mining rules"), MiningRules, exclude=("seed",))
    train_group = p.add_argument_group("training (--precision and --seed apply to every stage)")
    add_options(train_group, TrainConfig, exclude=(*NOT_PASSED_TO_TRAIN, "precision"))
    add_options(p.add_argument_group("executor (embed and mask)"), ExecutorSettings)
    p.set_defaults(**DEMO_DEFAULTS)
    return p


def stage(name: str, run, *args, **kwargs):
    print(f"\n== {name}", file=sys.stderr)
    started = time.perf_counter()
    result = run(*args, **kwargs)
    return result, time.perf_counter() - started


def evaluate(models: dict[str, str], split: evaluation.RetrievalFolder, device, out: Path) -> dict:
    """Each model's held-out scores, to 4 digits, through the evaluate command's code (``gist_mining.evaluation``),
    which also writes its table and chart to ``out`` and reuses the results of unchanged models on a rerun."""
    table = evaluation.evaluate(models, [split], out, evaluation.ModelOptions(device=device), quiet=True)
    return {row["model"]: {m: round(row[m], 4) for m in evaluation.METRICS} for row in table.iter_rows(named=True)}


def train_config(args) -> TrainConfig:
    """The job's TrainConfig: its options, less those it leaves at their defaults; its --overwrite for training too."""
    return from_args(TrainConfig, args, student=from_args(ModelSettings, args, name=args.student),
                     **{k: getattr(TrainConfig, k) for k in NOT_PASSED_TO_TRAIN if k != "overwrite"},
                     overwrite=args.overwrite)  # a student made as this run would make it is kept, or resumed


def mine(args, inputs: list[str], work: Path, config: TrainConfig) -> dict:
    """The embed and mask stages of the job on ``inputs``, into ``work``: the seconds of each."""
    if args.precision == "fp16":
        raise UsageError("--precision fp16: train.run takes fp32 or bf16 (fp16 needs a loss scaler)")
    rules = from_args(MiningRules, args)
    rules = replace(rules, num_negatives=max(config.negatives_per_anchor, rules.num_negatives))  # enough to train
    executor, seconds = from_args(ExecutorSettings, args), {}
    _, seconds["embed"] = stage("embed", embed, inputs, work, from_args(ModelSettings, args, name=args.guide),
                                from_args(EmbedOptions, args), from_args(Prompts, args),
                                reading=from_args(InputOptions, args), executor=executor)
    _, seconds["mask"] = stage("mask", mask, work, from_args(SearchSettings, args), rules, overwrite=args.overwrite,
                               executor=executor)
    return seconds


def run_job(args, inputs: list[str], split: Path, work: Path) -> dict:
    """One data set through every stage; the held-out scores of the base, plain and GIST students."""
    held_out = evaluation.RetrievalFolder(split)  # read and checked before any stage runs
    config = train_config(args)
    seconds = mine(args, inputs, work, config)
    models = {"base": args.student}
    for name, guide_filter in (("plain", "none"), ("gist", config.guide_filter)):
        out = work / workdir.MODELS / name
        _, seconds[f"train_{name}"] = stage(f"train ({name})", train, work, out, replace(config, guide_filter=guide_filter))
        models[name] = str(out)
    started = time.perf_counter()
    results = evaluate(models, held_out, args.device, work / EVALUATION)
    seconds["eval"] = time.perf_counter() - started
    write_json_atomic({"results": results, "seconds": seconds, "eval": str(split),
                       "settings": {k: str(v) for k, v in vars(args).items()}}, work / workdir.RESULTS)
    return {"results": results, "seconds": seconds}


def print_table(args, name: str, split: Path, job: dict) -> None:
    labels = {"base": f"{args.student} (base)", "plain": "fine-tuned, no guide filter",
              "gist": "fine-tuned, GIST guide filter"}
    print(f"\n{name} held-out: {split}  ({args.max_steps} steps x {args.batch_size} anchors each)")
    print(f"| {'model':<32} | NDCG@10 | MRR@10 | Recall@100 |\n|{'-' * 34}|---------|--------|------------|")
    for model, scores in job["results"].items():
        print(f"| {labels[model]:<32} | {scores['ndcg@10']:.4f}  | {scores['mrr@10']:.4f} | {scores['recall@100']:.4f}     |")
    seconds = job["seconds"]
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + f", total {sum(seconds.values()):.0f}")


def apply_recipe(parser, argv) -> recipes.Recipe | None:
    """The recipe ``argv`` names with --recipe, its defaults set on ``parser``; None without."""
    import torch

    known, _ = parser.parse_known_args(argv)
    recipe = recipes.RECIPES.get(known.recipe) if known.recipe else None
    if recipe:
        parser.set_defaults(**recipe.defaults(torch.cuda.is_available()))
    return recipe


def run_recipe(args, recipe: recipes.Recipe) -> Path:
    """The recipe through every stage: embed and mask its data set (or --input), train the student once, with the
    guide's filter; scored on --eval when given. Returns the model's folder."""
    config = train_config(args)
    # The trainer scores a held-out split before and after, when given, and keeps the published step's checkpoint:
    # every checkpoint is kept, or the later ones (every --save-minutes, the end) would remove it.
    config = replace(config, eval=args.eval, save_steps=recipe.checkpoint_step, keep_checkpoints=0)
    seconds = mine(args, args.input or [recipes.DATASET], args.work, config)
    out = args.work / workdir.MODELS / recipe.name
    _, seconds["train"] = stage(f"train ({recipe.name})", train, args.work, out, config)
    print(f"\nrecipe {recipe.name}: {out} (to compare with {recipe.release}; its step {recipe.checkpoint_step}: "
          f"{out / workdir.CHECKPOINTS}); seconds: "
          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()), file=sys.stderr)
    print(recipes.next_steps(recipe, out))
    return out


def main(argv=None, prog: str = "python -m pipeline.run") -> None:
    parser = build_parser(prog)
    recipe = apply_recipe(parser, argv)
    args = parser.parse_args(argv)
    if recipe:
        run_recipe(args, recipe)
        return
    if args.input:
        if args.eval is None:
            raise UsageError("--input needs --eval: a held-out retrieval split (queries, corpus, qrels)")
        jobs = [("input", args.input, args.eval, args.work or Path("runs/mine"))]
    else:
        jobs = [(name, [str(DATA / name / "train.parquet")], DATA / name / "test", Path("runs") / name)
                for name in BUNDLED]
    done = [(name, split, run_job(args, inputs, split, work)) for name, inputs, split, work in jobs]
    for name, split, job in done:
        print_table(args, name, split, job)


if __name__ == "__main__":
    cli.run(main)
