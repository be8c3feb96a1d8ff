"""Stage 1: embed every distinct text once with the guide model, into Parquet shards.

    python -m pipeline.embed --input data/sample/train.parquet --work runs/sample

Writes into the work directory: texts.parquet (text_id, text, is_query, is_document, n_chars),
anchors.parquet (anchor_id, source, source_row, query_id, positive_id, negative_ids, task),
embeddings/shard-*.parquet (text_id, embedding; with a query prompt unlike the document prompt, also
query_embedding: see gist_mining.workdir.role_column) and embed_manifest.json once every shard is done.
Texts held by the embedding cache (--cache-dir, shared by work directories; --no-cache) are read from it,
not recomputed, and what is computed is added to it. Resumable (completed shards are kept), refuses a work
directory made from another model, setting or input, and runs its shards through an executor
(gist_mining.executor: this process's share of --num-shards/--shard-index, or Ray tasks with --executor ray).
From Python: ``embed(inputs, work, guide, options, prompts)``.

The command line of gist_mining.embed: its settings (gist_mining/embed/settings.py), the plan and claim on the work
directory (plan.py), the shards' step (step.py: how a vector is computed reaches it through one function,
``encoder_for``), and ``embed`` (stage.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gist_mining import cli
from gist_mining.embed import EmbedOptions, InputOptions, embed
from gist_mining.executor import ExecutorSettings
from gist_mining.models import DEFAULT_GUIDE, ModelSettings, Prompts, add_prompt_options
from gist_mining.settings import HelpFormatter, add_options, from_args


def build_parser(prog: str = "python -m pipeline.embed") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--input", action="append", default=None,
                        help="pairs: a Parquet, JSONL or CSV file, a save_to_disk dataset, a folder or a glob of files, "
                             "a Hub dataset id or hf://datasets/OWNER/NAME/PATH (repeatable)")
    parser.add_argument("--corpus", action="append", default=[],
                        help="extra texts, column 'text', in any form --input takes (repeatable); with --qrels, the "
                             "BEIR corpus (_id, title, text)")
    add_options(parser.add_argument_group("input"), InputOptions)
    parser.add_argument("--work", required=True, type=Path, help="work directory")
    guide = parser.add_argument_group("guide")
    guide.add_argument("--guide", default=DEFAULT_GUIDE, help="bundled name, local directory or HF id")
    add_options(guide, ModelSettings)
    add_prompt_options(guide)
    add_options(parser, EmbedOptions)
    add_options(parser.add_argument_group("executor"), ExecutorSettings)
    return parser


def main(argv=None, prog: str = "python -m pipeline.embed") -> None:
    args = build_parser(prog).parse_args(argv)
    embed(args.input or [], args.work, from_args(ModelSettings, args, name=args.guide), from_args(EmbedOptions, args),
          from_args(Prompts, args), corpus=args.corpus, reading=from_args(InputOptions, args),
          executor=from_args(ExecutorSettings, args))


if __name__ == "__main__":
    cli.run(main)
