"""Stage 3: fine-tune a student on mined tables with GISTEmbed's guided in-batch loss, no guide forward pass.

    python -m train.run --work runs/sample --out models/gist-minilm --eval data/sample/val
    torchrun --nproc-per-node 2 -m train.run --work runs/sample --out models/gist-minilm

Each step: B anchors (query, positive, their first N mined negatives), the student embeds them, and the
guide's view of the same texts is a lookup into the embed stage's stored vectors. gist_mining.loss masks
the in-batch candidates the guide rates above each anchor's threshold, and the anchors' precomputed false
negatives, then takes cross-entropy. Checkpoints hold everything needed for --resume to continue exactly.
The command line of gist_mining.training (``train``, ``TrainConfig``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gist_mining import cli
from gist_mining.models import DEFAULT_STUDENT, ModelSettings, Prompts, add_prompt_options
from gist_mining.settings import HelpFormatter, add_options, from_args
from gist_mining.training import TrainConfig, train


def build_parser(prog: str = "python -m train.run") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--work", required=True, type=Path, help="work directory with mined/ (pipeline.mask)")
    p.add_argument("--out", required=True, type=Path, help="where the trained sentence-transformers model goes")
    student = p.add_argument_group("student")
    student.add_argument("--student", default=DEFAULT_STUDENT, help="bundled name, local directory or HF id")
    add_options(student, ModelSettings)
    add_prompt_options(student)
    add_options(p, TrainConfig)
    return p


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed options (``build_parser``; pipeline.run's parser holds the same options)."""
    return from_args(TrainConfig, args, student=from_args(ModelSettings, args, name=args.student),
                     prompts=from_args(Prompts, args))


def main(argv=None, prog: str = "python -m train.run") -> None:
    args = build_parser(prog).parse_args(argv)
    train(args.work, args.out, config_from(args))


if __name__ == "__main__":
    cli.run(main)
