"""The GIST recipe's mechanics scaled down on CPU: a MEDI-shaped set from the bundled data, GISTEmbed's own choices
against ours, over several seeds.

    flock /tmp/bench.lock python -m benchmarks.medi_recipe              # 3 seeds, 150 steps of 16
    python -m benchmarks.medi_recipe --seeds 1 --steps 20               # a quick look
    python -m benchmarks.medi_recipe --mining-only                      # the two minings only, seconds

The set: the bundled sample's and sections' training pairs (4 tasks: python-doc, wordnet-synonyms, wordnet-example,
debian-section) written as GISTEmbed's data set writes them (query, pos, neg, task_name and *_instruct columns,
instructions dropped as the recipe drops them). Each row's given negative is, as in GISTEmbed's MTEB classification
triplets, another row's positive of the same task: for sections one of another section, for the sample any other.
Embedded once with the bundled guide; mined twice:

    given   --negatives-from given --margin-strategy absolute --margin 0 (the recipe: the row's own negative,
            masked when the guide scores it above the positive)
    corpus  the default mining: the pool's top 100 by the guide, relative margin 0.05, given negatives first

Arms (train.run, the bundled student, batch 16, temperature 0.01, warmup 0.1 as the recipe; learning rate 2e-5, not
the recipe's 5e-6, which is tuned for 100k steps; --steps steps, the same seeds):

    recipe          given negatives, --task-batching paper (GISTEmbed's batches)
    corpus-paper    corpus negatives, --task-batching paper
    given-shuffled  given negatives, --task-batches (ours: shuffled within a task, no text twice in a batch)

Each student is scored on the held-out test splits of sections and of the sample (NDCG@10, mean +- std over seeds);
a difference against the recipe is real only beyond 2 std of the difference of single runs. Also printed: the share
of given negatives the guide flags, the rows paper batching leaves out, and seconds per training step (on a shared
machine, not a step time to plan with). Resumable: each finished run is a line of --runs.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import polars as pl
import torch

from benchmarks.common import ROOT, table
from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, load_model
from gist_mining.training.batches import PaperPlan
from gist_mining.training.data import TrainingData
from gist_mining.training.evaluate import headline, make_evaluator
from pipeline import embed, mask
from train import run as train_command

DATA = {"sections": ROOT / "data" / "sections", "sample": ROOT / "data" / "sample"}
MINING = {"given": ["--negatives-from", "given", "--margin-strategy", "absolute", "--margin", "0"], "corpus": []}
ARMS = {"recipe": ("given", ["--task-batching", "paper"]), "corpus-paper": ("corpus", ["--task-batching", "paper"]),
        "given-shuffled": ("given", ["--task-batches"])}
RECIPE = ["--batch-size", "16", "--temperature", "0.01", "--warmup-ratio", "0.1", "--lr", "2e-5",
          "--negatives-in-batch", "1"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def medi_set(path: Path, seed: int = 0) -> Path:
    """The bundled training pairs as GISTEmbed's data set lays them out, one given negative per row."""
    rng, rows = random.Random(seed), []
    for folder in DATA.values():
        pairs = pl.read_parquet(folder / "train.parquet")
        label = pairs["section"] if "section" in pairs.columns else pl.Series(range(pairs.height))
        for i, row in enumerate(pairs.iter_rows(named=True)):
            while True:  # another row's positive of the same task (of another section, for sections)
                j = rng.randrange(pairs.height)
                if label[j] != label[i] and pairs["task"][j] == row["task"] and pairs["positive"][j] != row["positive"]:
                    break
            rows.append({"query": row["query"], "pos": row["positive"], "neg": pairs["positive"][j],
                         "task_name": row["task"], "query_instruct": f"Represent the {row['task']} query: ",
                         "pos_instruct": f"Represent the {row['task']} document: ",
                         "neg_instruct": f"Represent the {row['task']} document: "})
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(path)
    return path


def mined_copies(work: Path, guide: str) -> dict[str, Path]:
    """Embed once, then one copy mined per variant."""
    embedded = work / "embedded"
    if not (embedded / workdir.EMBED_MANIFEST).exists():
        embed.main(["--input", str(medi_set(work / "medi.parquet")), "--work", str(embedded), "--guide", guide])
    copies = {}
    for variant, rules in MINING.items():
        copies[variant] = work / variant
        try:
            workdir.checked_mined_manifest(copies[variant])
        except UsageError:
            shutil.rmtree(copies[variant], ignore_errors=True)
            shutil.copytree(embedded, copies[variant])
            mask.main(["--work", str(copies[variant]), *rules])
    return copies


def scores(model_path: str) -> dict:
    model = load_model(model_path, device=DEVICE)
    return {name: headline(make_evaluator(folder / "test", "test")(model))["ndcg@10"]
            for name, folder in DATA.items()}


def run_all(args) -> list[dict]:
    runs = Path(args.runs)
    done = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    have = {(r["arm"], r["seed"], r["steps"]) for r in done}
    copies = mined_copies(Path(args.work), args.guide)
    todo = [("base", 0)] + [(arm, seed) for arm in args.arms for seed in args.seeds]
    for arm, seed in todo:
        steps = 0 if arm == "base" else args.steps  # the base student trains no step
        if (arm, seed, steps) in have:
            continue
        record = {"arm": arm, "seed": seed, "steps": steps, "device": DEVICE}
        if arm == "base":
            record["test"] = scores(args.student)
        else:
            variant, options = ARMS[arm]
            out = Path(args.work) / "models" / f"{arm}-{seed}"
            started = time.perf_counter()
            train_command.main(["--work", str(copies[variant]), "--out", str(out), "--student", args.student, "--max-steps",
                        str(args.steps), "--seed", str(seed), *RECIPE, *options])
            record["train_seconds"] = round(time.perf_counter() - started, 1)
            logged = [json.loads(line) for line in (out / workdir.METRICS).read_text().splitlines()]
            steps = [m for m in logged if "loss" in m]
            record["seconds_per_step"] = round(steps[-1]["seconds"] / len(steps), 3)
            record["masked_fraction"] = round(statistics.mean(m["masked_fraction"] for m in steps), 4)
            record["test"] = scores(str(out))
            shutil.rmtree(out)
        with runs.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        done.append(record)
        print(json.dumps(record), file=sys.stderr)
    return [r for r in done if r["steps"] in (0, args.steps) and r["arm"] in ("base", *args.arms)
            and (r["arm"] == "base" or r["seed"] in args.seeds)]


def stats(records: list[dict], arm: str) -> dict[str, tuple[float, float]]:
    chosen = [r for r in records if r["arm"] == arm]
    return {name: (statistics.mean(r["test"][name] for r in chosen),
                   statistics.stdev(r["test"][name] for r in chosen) if len(chosen) > 1 else 0.0) for name in DATA}


def verdict(a: tuple[float, float], b: tuple[float, float]) -> str:
    diff, noise = a[0] - b[0], 2 * (a[1] ** 2 + b[1] ** 2) ** 0.5
    return f"{diff:+.4f}{'*' if abs(diff) > noise > 0 else ''}"


def mining_table(copies: dict[str, Path]) -> str:
    """Per mining variant and task: what each anchor gets (mined_summary.json)."""
    rows = []
    for variant, work in copies.items():
        summary = json.loads((work / workdir.SUMMARY).read_text())
        for task, d in {"all": summary, **summary["per_task"]}.items():
            rows.append((variant, task, d["anchors"], f"{d['negatives_per_anchor']:.2f}",
                         f"{d['false_negatives_per_anchor']:.2f}", d["anchors_short_of_negatives"],
                         d["anchors_the_guide_cannot_judge"]))
    return table(rows, ("mining", "task", "anchors", "negatives / anchor", "false negatives / anchor",
                        "anchors short of 3", "anchors the guide cannot judge"))


def report(records: list[dict], copies: dict[str, Path], args) -> str:
    recipe = stats(records, "recipe")
    rows = []
    for arm in ("base", *args.arms):
        s = stats(records, arm)
        cells = [f"{s[n][0]:.4f} +- {s[n][1]:.4f}" if arm != "base" else f"{s[n][0]:.4f}" for n in DATA]
        diffs = [verdict(s[n], recipe[n]) if arm not in ("recipe", "base") else "-" for n in DATA]
        per_step = [r["seconds_per_step"] for r in records if r["arm"] == arm and "seconds_per_step" in r]
        rows.append((arm, *cells, *diffs, f"{statistics.mean(per_step):.2f}" if per_step else "-"))
    given = json.loads((copies["given"] / workdir.SUMMARY).read_text())
    data = TrainingData(copies["given"], 1, "cpu")
    left_out = PaperPlan(data.plan_rows, 16, 42, 0).waiting
    lines = [(f"Seeds {', '.join(map(str, args.seeds))}; {args.steps} steps of 16 anchors; device {DEVICE}; guide "
              f"{args.guide}, student {args.student}. Test NDCG@10; differences against the recipe, * beyond 2 std."),
             "", table(rows, ("arm", *(f"{n} test" for n in DATA), *(f"{n} vs recipe" for n in DATA), "s/step")), "",
             (f"Given negatives the guide flags (absolute margin 0): {given['given_negatives_flagged']} of "
              f"{given['anchors']} ({given['given_negatives_flagged'] / given['anchors']:.1%}); rows paper batching "
              f"leaves out at batch 16: {left_out} of {len(data)}.")]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-medi-recipe"))
    p.add_argument("--runs", default=str(ROOT / "benchmarks" / "results" / "medi_recipe_runs.jsonl"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "medi_recipe.md"))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    p.add_argument("--mining-only", action="store_true", help="mine both ways and print what each anchor gets; no training")
    p.add_argument("--guide", default=DEFAULT_GUIDE)
    p.add_argument("--student", default=DEFAULT_STUDENT)
    args = p.parse_args()
    copies = mined_copies(Path(args.work), args.guide)
    text = mining_table(copies)
    if not args.mining_only:
        text = report(run_all(args), copies, args) + "\n\n" + text
    print(text)
    Path(args.out).write_text(f"# The GIST recipe's mechanics, scaled down\n\n`{shlex.join(['python', '-m', 'benchmarks.medi_recipe', *sys.argv[1:]])}`, "
                              f"{time.strftime('%Y-%m-%d')}, {DEVICE}, guide {args.guide}\n\n{text}\n")


if __name__ == "__main__":
    main()
