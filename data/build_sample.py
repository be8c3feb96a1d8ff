"""Build the bundled sample from real text that can be had offline.

    apt-get install wordnet-base && python data/build_sample.py --out data/sample

Three tasks, each a retrieval problem whose corpus side is a definition:
- ``wordnet-example``: a WordNet usage example ("The patient must be sedated before the operation")
  -> the gloss of its synset ("cause to be calm or quiet as by administering a sedative to").
- ``wordnet-synonyms``: the lemmas of a synset ("sedate, calm, tranquilize") -> its gloss.
- ``python-doc``: a Python standard-library function's dotted name -> the first paragraph of its
  docstring, taken from the interpreter that runs this script.
Why these: WordNet glosses of related senses are close to each other (the false negatives GISTEmbed's
guide is meant to catch); the docstrings are a second domain with its own vocabulary.

Synsets and functions are split before sampling, so no held-out positive is seen in training.
Writes train.parquet (query, positive, task), corpus.parquet (extra glosses, negatives only), and
retrieval splits val/ and test/ (queries: query_id, text, task; corpus: doc_id, text; qrels: query_id,
doc_id, score), plus the WordNet licence notice.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import random
import re
import shutil
import sys
import warnings
from pathlib import Path

import polars as pl

WORDNET = Path("/usr/share/wordnet")
WORDNET_NOTICE = Path("/usr/share/doc/wordnet-base/copyright")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")


def read_synsets() -> list[dict]:
    """Every synset as {id, lemmas, gloss, examples}, parsed from WordNet's data.* files."""
    synsets = []
    for pos in PARTS_OF_SPEECH:
        for line in open(WORDNET / f"data.{pos}", encoding="utf-8"):
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            n_words = int(fields[3], 16)
            lemmas = [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
            parts = [p.strip() for p in gloss.strip().split(";")]
            definition = "; ".join(p for p in parts if not p.startswith('"'))
            examples = [p.strip('"').strip() for p in parts if p.startswith('"') and len(p.strip('"')) > 20]
            if len(definition) >= 15:
                synsets.append({"id": f"{pos}:{fields[0]}", "lemmas": lemmas, "gloss": definition, "examples": examples})
    return synsets


def read_docstrings() -> list[dict]:
    """Public stdlib functions with a docstring whose first paragraph is a real sentence."""
    seen, items = set(), []
    modules = sorted(m.name for m in pkgutil.iter_modules() if m.name in sys.stdlib_module_names)
    for name in modules:
        if name.startswith("_") or name in ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:
            continue
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not callable(obj) or getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj) or ""
            summary = " ".join(doc.split("\n\n")[0].split())
            if 25 <= len(summary) <= 400 and ">>>" not in summary and summary not in seen and "(" not in summary[:len(attr) + 2]:
                seen.add(summary)
                items.append({"id": f"{name}.{attr}", "query": f"{name}.{attr}", "doc": summary})
    return items


def pairs_for(synsets: list[dict], functions: list[dict], rng: random.Random, n: dict) -> pl.DataFrame:
    with_examples = [s for s in synsets if s["examples"]]
    rows = [
        {"query": rng.choice(s["examples"]), "positive": s["gloss"], "task": "wordnet-example"}
        for s in rng.sample(with_examples, min(n["wordnet-example"], len(with_examples)))
    ]
    with_synonyms = [s for s in synsets if len(s["lemmas"]) >= 2]
    rows += [
        {"query": ", ".join(s["lemmas"]), "positive": s["gloss"], "task": "wordnet-synonyms"}
        for s in rng.sample(with_synonyms, min(n["wordnet-synonyms"], len(with_synonyms)))
    ]
    rows += [
        {"query": f["query"], "positive": f["doc"], "task": "python-doc"}
        for f in rng.sample(functions, min(n["python-doc"], len(functions)))
    ]
    return pl.DataFrame(rows).unique(subset=["query", "positive"], keep="first", maintain_order=True)


def write_retrieval(pairs: pl.DataFrame, distractors: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    docs = pl.DataFrame({"text": pl.concat([pairs["positive"], pl.Series(distractors)]).unique(maintain_order=True)})
    docs = docs.with_row_index("n").select(pl.format("d{}", "n").alias("doc_id"), "text")
    queries = pairs.with_row_index("n").select(pl.format("q{}", "n").alias("query_id"), pl.col("query").alias("text"),
                                               "task", "positive")
    qrels = queries.join(docs, left_on="positive", right_on="text").select("query_id", "doc_id", pl.lit(1).alias("score"))
    queries.drop("positive").write_parquet(out / "queries.parquet")
    docs.write_parquet(out / "corpus.parquet")
    qrels.write_parquet(out / "qrels.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "sample")
    parser.add_argument("--train-per-task", type=int, default=1000)
    parser.add_argument("--eval-per-task", type=int, default=200)
    parser.add_argument("--val-per-task", type=int, default=100)
    parser.add_argument("--distractors", type=int, default=3000, help="extra glosses in each eval corpus")
    parser.add_argument("--extra-corpus", type=int, default=1000, help="glosses in corpus.parquet")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    synsets, functions = read_synsets(), read_docstrings()
    rng.shuffle(synsets)
    rng.shuffle(functions)
    # Synsets and functions are split before sampling: 10% test, 5% validation, the rest train.
    cut = lambda items, a, b: items[int(a * len(items)) : int(b * len(items))]  # noqa: E731
    splits = {
        "test": (cut(synsets, 0, 0.10), cut(functions, 0, 0.20), args.eval_per_task),
        "val": (cut(synsets, 0.10, 0.15), cut(functions, 0.20, 0.30), args.val_per_task),
        "train": (cut(synsets, 0.15, 1.0), cut(functions, 0.30, 1.0), args.train_per_task),
    }
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for split, (split_synsets, split_functions, per_task) in splits.items():
        n = {"wordnet-example": per_task, "wordnet-synonyms": per_task, "python-doc": per_task}
        pairs = pairs_for(split_synsets, split_functions, rng, n)
        if split == "train":
            pairs.write_parquet(out / "train.parquet")
            used = set(pairs["positive"])
            extra = [s["gloss"] for s in split_synsets if s["gloss"] not in used][: args.extra_corpus]
            pl.DataFrame({"text": extra}).write_parquet(out / "corpus.parquet")
        else:
            used = set(pairs["positive"])
            distractors = [s["gloss"] for s in split_synsets if s["gloss"] not in used][: args.distractors]
            write_retrieval(pairs, distractors, out / split)
        print(split, pairs.group_by("task").len().sort("task").rows())
    shutil.copy(WORDNET_NOTICE, out / "LICENSE-WordNet.txt")
    (out / "LICENSE-Python.txt").write_text(
        f"python-doc rows quote docstrings of the Python {sys.version.split()[0]} standard library,\n"
        "Copyright (c) 2001 Python Software Foundation; All Rights Reserved; "
        "used under the PSF License Agreement (https://docs.python.org/3/license.html).\n"
    )


if __name__ == "__main__":
    main()
