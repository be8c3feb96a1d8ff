"""Recipes: a published model's training as one command, ``python -m pipeline.run --recipe NAME`` (or
``gist-mining run --recipe NAME``). A recipe is the paper's settings as pipeline.run's option defaults
(``Recipe.defaults``); any option given on the command line still wins (a smaller --epochs, another --student, a
local --input).

The GIST recipes (Solatorio 2024, arXiv 2402.16829; the GIST models' cards and training repository): the MEDI + MTEB
classification triplets at the revision the models were trained on, instructions dropped, the guide
WhereIsAI/UAE-Large-V1, the data set's own negative per anchor judged by the guide (``--negatives-from given``,
GISTEmbed's rule: masked when the guide scores it above the positive) plus the batch's texts under the same rule,
one task per batch as the paper cuts them (``--task-batching paper``), temperature 0.01, learning rate 5e-6 with 10%
warmup, max length 512, bf16 where CUDA is. What stays this project's: the guide's vectors are computed once and
stored, not re-encoded every step; weight decay is the trainer's default (0.01).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DATASET, REVISION = "avsolatorio/medi-data-mteb_avs_triplets", "238a0499b6e6b690cc64ea56fde8461daa8341bb"
GUIDE = "WhereIsAI/UAE-Large-V1"
# MTEB's English benchmark as the GIST models were scored on it: 56 tasks, 15 of them retrieval (NDCG@10).
BENCHMARK = "MTEB(eng, v1)"


@dataclass(frozen=True)
class Recipe:
    name: str
    student: str
    batch_size: int
    epochs: float
    checkpoint_step: int  # the step of the published checkpoint: the recipe saves one there
    release: str  # the published model this recipe reproduces
    published: dict = field(default_factory=dict)  # model -> (MTEB average over 56 tasks, retrieval average)

    def defaults(self, cuda: bool) -> dict:
        """pipeline.run's option values (argparse dests) for this recipe."""
        return {"input_revision": REVISION, "guide": GUIDE, "student": self.student, "max_seq_length": 512,
                "negatives_from": "given", "margin_strategy": "absolute", "margin": 0.0,
                "temperature": 0.01, "lr": 5e-6, "warmup_ratio": 0.1, "batch_size": self.batch_size,
                "epochs": self.epochs, "max_steps": None, "task_batching": "paper", "negatives_per_anchor": 1,
                "precision": "bf16" if cuda else "fp32", "work": Path("runs") / self.name}


RECIPES = {r.name: r for r in (
    Recipe("gist-small", "BAAI/bge-small-en-v1.5", batch_size=16, epochs=40.0, checkpoint_step=102_000,
           release="avsolatorio/GIST-small-Embedding-v0",
           published={"avsolatorio/GIST-small-Embedding-v0": (62.48, 50.43), "BAAI/bge-small-en-v1.5": (62.17, 51.68)}),
    Recipe("gist-base", "BAAI/bge-base-en-v1.5", batch_size=32, epochs=80.0, checkpoint_step=103_500,
           release="avsolatorio/GIST-Embedding-v0"),
)}


def next_steps(recipe: Recipe, out: Path) -> str:
    """What to run after training: MTEB's English benchmark, and the published figures to compare."""
    lines = [f"Evaluate it on MTEB's English benchmark ({BENCHMARK}: 56 tasks, 15 of them retrieval):",
             f"  mteb run -m {out} -b '{BENCHMARK}'"]
    if recipe.published:
        lines.append("Published averages (all 56 tasks / retrieval NDCG@10):")
        lines += [f"  {model}: {average} / {retrieval}" for model, (average, retrieval) in recipe.published.items()]
    return "\n".join(lines)
