"""train.run's settings, every default in one place: ``TrainConfig`` (its fields generate the command line's options,
gist_mining.settings) and its record as JSON."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gist_mining.distill import DISTILL, DISTILL_MASKS, Distillation
from gist_mining.loss import FALSE_NEGATIVES, GUIDE_FILTERS, HARDNESS_NEGATIVES, LossRules
from gist_mining.margin import STRATEGIES
from gist_mining.models import DEFAULT_STUDENT, ModelSettings, Prompts
from gist_mining.settings import option
from gist_mining.training.batches import BATCHINGS
from gist_mining.training.reporting import REPORT_TO


class Sizes(tuple):
    """Embedding sizes, written as the option takes them (768,512,256), so that to_argv gives them back."""

    def __str__(self) -> str:
        return ",".join(map(str, self))


def embedding_sizes(text: str) -> Sizes:
    """--matryoshka-dims 768,512,256: the sizes, largest first (as MatryoshkaLoss sorts them)."""
    try:
        sizes = Sizes(sorted({int(d) for d in text.split(",") if d.strip()}, reverse=True))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of sizes, e.g. 768,512,256")
    if any(d < 1 for d in sizes):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive")
    return sizes


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run takes besides its work directory and output folder. The defaults are the
    settings the README's results were measured with; pipeline.run trains with these too."""

    student: ModelSettings = field(default_factory=lambda: ModelSettings(DEFAULT_STUDENT))
    prompts: Prompts = field(default_factory=Prompts)  # the student's; the guide's roles are the embed stage's
    batch_size: int = option(32, "anchors per step (per process)")
    epochs: float = option(1.0, "passes over the mined rows (--max-steps overrides)")
    max_steps: int | None = option(None, "optimizer steps (overrides --epochs)", type=int)
    lr: float = option(2e-5, "peak learning rate (AdamW; linear warmup, then linear decay)")
    warmup_ratio: float = option(0.1, "part of the steps spent warming the learning rate up")
    weight_decay: float = option(0.01, "AdamW weight decay")
    temperature: float = option(0.05, "the loss's softmax temperature")
    # GISTEmbed's in-batch rule: mask what the guide scores above the positive. Named apart from the mining
    # rule's --margin-strategy/--margin (pipeline.mask), which has other defaults.
    in_batch_margin_strategy: str = option("absolute", "the in-batch guide rule: mask an in-batch candidate the guide "
                                                       "scores above the positive's score less the margin "
                                                       "(absolute; relative: less margin x |score|; none: never)",
                                           choices=STRATEGIES)
    in_batch_margin: float = option(0.0, "the in-batch guide rule's margin")
    # Its own flag: pipeline.mask's --negatives-per-anchor is how many are mined (3), this how many of those train.
    negatives_per_anchor: int = option(1, "each anchor's first N mined negatives in its batch (at most the N "
                                          "pipeline.mask's --negatives-per-anchor mined)", flag="--negatives-in-batch")
    task_batches: bool = option(False, "each batch from one task (MEDI style)")
    task_batching: str = option("shuffled", "how one-task batches are made: shuffled within a task, no text twice in "
                                            "a batch (--task-batches), or paper: GISTEmbed's, the task-sorted rows cut "
                                            "into consecutive chunks, a chunk spanning two tasks dropped, the chunks "
                                            "shuffled (implies --task-batches; gist_mining.training.batches)",
                                choices=BATCHINGS)
    min_batch_size: int = option(1, "smaller batches wait for a later epoch")
    guide_cache: str = option("0", "device memory for the guide's float16 vectors, e.g. 2G: when all the rows use fit, "
                              "they are moved there once (all: whatever their size); else each batch's are read from "
                              "the vector store (0, the default: memory flat in the anchors)")
    precision: str = option("fp32", "forward-pass dtype; bf16 autocasts on CUDA", choices=("fp32", "bf16"))
    gradient_checkpointing: bool = option(False, "recompute activations in backward: less memory, more time")
    mini_batch_size: int = option(0, "GradCache: texts per forward pass; the batch's loss is exact, memory that of "
                                     "a mini-batch (0: off)")
    guide_filter: str = option("precomputed", "in-batch masks: the guide's (precomputed vectors), none (plain loss), "
                                              "or controls that mask as many logits per anchor as the guide would, "
                                              "at random (seeded) or the student's hardest; self: the student's own "
                                              "scores (Qwen3-Embedding's rule, no guide), guide+self: either",
                               choices=tuple(GUIDE_FILTERS))
    # The rules beyond GISTEmbed's mask (#26; gist_mining.loss.LossRules says what each does).
    self_margin: float = option(LossRules.self_margin, "self filter: mask c when the student's s(q, c) > "
                                                       "s(q, positive) + this")
    hardness_strength: float = option(LossRules.hardness_strength, "raise negatives' logits by this x "
                                      "stopgrad(cosine) (0: off; 5 to 9 in the literature)")
    hardness_negatives: str = option(LossRules.hardness_negatives, "which negatives hardness weighting raises: other "
                                     "anchors' positives, mined, or all", choices=HARDNESS_NEGATIVES)
    false_negatives: str = option(LossRules.false_negatives, "the guide's suspects: masked, or (positives) known false "
                                  "negatives and those the guide scores above the positive by --promote-margin "
                                  "counted as extra positives (RLHN)", choices=FALSE_NEGATIVES)
    promote_margin: float = option(LossRules.promote_margin, "with --false-negatives positives: how far above the "
                                                             "positive the guide must score an in-batch suspect")
    false_negatives_in_batch: int = option(0, "each anchor's first N known false negatives from mined/ join the batch "
                                              "(with --false-negatives positives: as its extra positives; mining left "
                                              "them out of its negatives)")
    suspect_weight: float = option(LossRules.suspect_weight, "weight of a suspect negative in the softmax: 0 masks "
                                                             "it, W in (0, 1] down-weights it")
    # The guide as teacher (#35; gist_mining.distill.Distillation says what each does).
    distill: str = option(Distillation.kind, "distil from the guide's stored vectors too: KL toward its softmax over "
                          "each anchor's in-batch entries (scores), cosine to its vectors through a trained map "
                          "(embeddings), or both", choices=DISTILL)
    distill_weight: float = option(Distillation.weight, "each distillation term's weight beside the contrastive loss")
    distill_temperature: float = option(Distillation.temperature, "score distillation: the teacher's softmax "
                                                                  "temperature over the guide's cosines")
    distill_mask: str = option(Distillation.mask, "score distillation: leave the anchor's suspects (the in-batch "
                                                  "filters' false negatives) out of the teacher's distribution, the "
                                                  "student's, both or neither", choices=DISTILL_MASKS)
    # Corpus rows and MarginMSE: runs from before these two existed resume (checkpoints.run_identity leaves them out
    # at their defaults).
    distill_corpus: int = option(Distillation.corpus, "texts of the work directory (any the guide embedded, not only "
                                 "the pairs') drawn per batch (per process) as extra rows of --distill's terms: their "
                                 "vectors matched to the guide's (embeddings), extra candidates of each anchor in the "
                                 "KL's two softmaxes only, never in the contrastive loss (scores); drawn from --seed "
                                 "and the step (0: none)")
    distill_margin_mse: float = option(Distillation.margin_mse, "MarginMSE's weight: the student's cos(q, p) - "
                                       "cos(q, n) toward a cross-encoder's margin on each anchor's mined negatives, "
                                       "its scores stored by pipeline.mask --rescore-model NAME (0: off)")
    distill_map_lr: float = option(1e-3, "embedding distillation: peak learning rate of the map from the student's "
                                         "size to the guide's (trained from scratch; not saved with the model)")
    eval: Path | None = option(None, "retrieval split: a folder in BEIR's layout (corpus, queries, qrels/test) or the "
                                     "bundled sets' (queries, corpus, qrels .parquet)", type=Path)
    eval_steps: int = option(0, "evaluate every N steps (0: before and after only)")
    # Checkpoints by default: a rerun of the same command resumes from the newest (tests/crash.py kills it).
    save_steps: int = option(500, "checkpoint every N steps (0: not by steps), and always at the end")
    save_minutes: float = option(30.0, "checkpoint also when this many minutes passed since the last (0: not by time)")
    keep_checkpoints: int = option(2, "keep the newest N checkpoints in --out/checkpoints, removing older ones of "
                                      "this run (0: keep all)")
    resume: bool = option(False, "accepted for old command lines: a rerun resumes from the newest checkpoint anyway")
    overwrite: bool = option(False, "start over when --out holds a run made from other mined tables or settings "
                                    "(its checkpoints, metrics and record are removed); the same run still resumes")
    seed: int = option(42, "seed of every random draw of the stage (batches, dropout, the random control)")
    matryoshka_dims: tuple[int, ...] = option((), "embedding sizes to train at, e.g. 768,512,256: the loss summed over "
                                                  "the embeddings cut to each, as MatryoshkaLoss; evaluation at each "
                                                  "(arXiv 2205.13147)", type=embedding_sizes, metavar="D1,D2,...")
    report_to: str = option("none", "where metrics.jsonl's figures go too, through transformers' integrations",
                            choices=REPORT_TO)
    push_to_hub: str | None = option(None, "upload the output folder (model, card; not checkpoints) to this Hub model "
                                           "repository, OWNER/NAME, through huggingface_hub", type=str, metavar="REPO_ID")


def as_record(config: TrainConfig) -> dict:
    """The config as JSON: nested settings as objects, paths as strings."""
    return json.loads(json.dumps(asdict(config), default=str))
