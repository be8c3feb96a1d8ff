"""Score models on retrieval folders, NanoBEIR and MTEB, side by side in one table.

    python -m pipeline.evaluate all-MiniLM-L6-v2 runs/sample/models/gist --beir data/sample/test --out runs/eval
    python -m pipeline.evaluate BASE TRAINED --nanobeir scifact nfcorpus --mteb SciFact 'MTEB(eng, v2)' --out runs/eval

MODEL: a bundled name, a trained output folder or a Hugging Face id (several: compared). --beir: a folder in
BEIR's layout (corpus.jsonl, queries.jsonl, qrels/test.tsv; Parquet, CSV and JSONL alike) or the bundled sets'
(queries/corpus/qrels.parquet). --nanobeir: sentence-transformers' NanoBEIR (all 13 data sets, or those named),
from the Hugging Face cache. --mteb: MTEB task or benchmark names (needs the [eval] extra: pip install mteb).
Writes OUT/results.parquet, OUT/results.md and OUT/results.png (a row per model, suite and task); a rerun reuses
the finished results kept in OUT. Offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1) the cache serves the data.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from gist_mining import cli
from gist_mining.errors import UsageError
from gist_mining.evaluation import MTEB, ModelOptions, NanoBEIR, RetrievalFolder, evaluate
from gist_mining.evaluation.run import say
from gist_mining.evaluation.suites import NANOBEIR_ID
from gist_mining.models import ModelSettings, Prompts, add_prompt_options
from gist_mining.settings import HelpFormatter, add_options, from_args, option


@dataclass(frozen=True)
class Suites:
    """Which suites to score on (at least one)."""

    beir: list[Path] | None = option(None, "retrieval folders, BEIR's layout or the bundled sets'", type=Path,
                                     nargs="+", metavar="DIR")
    split: str = option("test", "which qrels/SPLIT file of a BEIR folder")
    nanobeir: list[str] | None = option(None, "NanoBEIR data sets (none named: all 13), e.g. scifact nfcorpus",
                                        nargs="*", metavar="NAME")
    nanobeir_dataset: str = option(NANOBEIR_ID, "the Hub data set NanoBEIR is read from (a translation, e.g. "
                                                "lightonai/NanoBEIR-de)")
    mteb: list[str] | None = option(None, "MTEB task or benchmark names, e.g. SciFact 'MTEB(eng, v2)'", nargs="+",
                                    metavar="NAME")

    def build(self) -> list:
        """The suites, each checked now (rows, names, cached data): a bad one stops before any model runs."""
        if not (self.beir or self.nanobeir is not None or self.mteb):
            raise UsageError("nothing to score on: give --beir DIR, --nanobeir [NAME ...] or --mteb NAME")
        suites = [RetrievalFolder(folder, self.split) for folder in self.beir or []]
        if self.nanobeir is not None:
            suites.append(NanoBEIR(self.nanobeir or None, self.nanobeir_dataset))
        if self.mteb:
            suites.append(MTEB(self.mteb))
        return suites


def build_parser(prog: str = "python -m pipeline.evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="bundled name, local directory or HF id")
    p.add_argument("--out", required=True, type=Path, help="where the table, the chart and the kept results go")
    add_options(p.add_argument_group("suites"), Suites)
    models = p.add_argument_group("models (every MODEL; the prompts per role, default: each model's own)")
    add_options(models, ModelSettings)
    add_prompt_options(models)
    return p


def main(argv=None, prog: str = "python -m pipeline.evaluate") -> None:
    args = build_parser(prog).parse_args(argv)
    suites = from_args(Suites, args).build()
    options = from_args(ModelOptions, args, prompts=from_args(Prompts, args))
    say(evaluate(args.models, suites, args.out, options), args.out)


if __name__ == "__main__":
    cli.run(main)
