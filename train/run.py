"""Stage 3: fine-tune a student on mined tables with GISTEmbed's guided in-batch loss, no guide forward pass.

    python -m train.run --work runs/sample --out models/gist-minilm --eval data/sample/val
    torchrun --nproc-per-node 2 -m train.run --work runs/sample --out models/gist-minilm

Each step: B anchors (query, positive, their first N mined negatives), the student embeds them, and the
guide's view of the same texts is a lookup into the embed stage's stored vectors. gist_mining.loss masks
the in-batch candidates the guide rates above each anchor's threshold, and the anchors' precomputed false
negatives, then takes cross-entropy. Checkpoints hold everything needed for --resume to continue exactly.

Read top to bottom: the config (TrainConfig, build_parser), the data (TrainingData and its get_batch), the batch
plans (plan_batches, epoch_batches), the step, checkpoints, evaluation, and the loop (main).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from gist_mining import cli, hub, workdir
from gist_mining.distill import DISTILL, DISTILL_MASKS, Distillation
from gist_mining.errors import UsageError
from gist_mining.loss import (FALSE_NEGATIVES, HARDNESS_NEGATIVES, Column, GISTLoss, GuidedBatch, LossRules,
                               summed_over_sizes)
from gist_mining.mining import PAD_ID, STRATEGIES, is_unjudged, padded
from gist_mining.models import DEFAULT_STUDENT, ModelSettings, Prompts, add_prompt_options, load_model, role_prompts
from gist_mining.settings import HelpFormatter, add_options, from_args, option, to_argv
from gist_mining.storage import (commit, read_json, remove_stale_temps, tmp_name, write_bytes_atomic,
                                  write_json_atomic)
from gist_mining.reporting import REPORT_TO, Reporter
from gist_mining.workdir import VectorStore
from train import card

# The trainer's --guide-filter choices and the loss they make: (guided, control) of GISTLoss, LossRules.self_filter.
GUIDE_FILTERS = {"precomputed": (True, None, False), "none": (False, None, False), "random": (True, "random", False),
                 "hardest": (True, "hardest", False), "self": (False, None, True), "guide+self": (True, None, True)}


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

# -- config: every default in one place ------------------------------------------------------------------


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
    negatives_per_anchor: int = option(1, "mined negatives used per anchor (at most pipeline.mask's "
                                          "--negatives-per-anchor)")
    task_batches: bool = option(False, "each batch from one task (MEDI style)")
    min_batch_size: int = option(1, "smaller batches wait for a later epoch")
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
    distill_map_lr: float = option(1e-3, "embedding distillation: peak learning rate of the map from the student's "
                                         "size to the guide's (trained from scratch; not saved with the model)")
    eval: Path | None = option(None, "retrieval split: queries, corpus, qrels .parquet", type=Path)
    eval_steps: int = option(0, "evaluate every N steps (0: before and after only)")
    save_steps: int = option(0, "checkpoint every N steps (0: never)")
    resume: bool = option(False, "continue from the newest checkpoint in --out")
    seed: int = option(42, "seed of every random draw of the stage (batches, dropout, the random control)")
    matryoshka_dims: tuple[int, ...] = option((), "embedding sizes to train at, e.g. 768,512,256: the loss summed over "
                                                  "the embeddings cut to each, as MatryoshkaLoss; evaluation at each "
                                                  "(arXiv 2205.13147)", type=embedding_sizes, metavar="D1,D2,...")
    report_to: str = option("none", "where metrics.jsonl's figures go too, through transformers' integrations",
                            choices=REPORT_TO)
    push_to_hub: str | None = option(None, "upload the output folder (model, card; not checkpoints) to this Hub model "
                                           "repository, OWNER/NAME, through huggingface_hub", type=str, metavar="REPO_ID")


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


# -- data ------------------------------------------------------------------------------------------------

COLUMNS = ("queries", "positives", "negatives")
ROLES = {"queries": "query", "positives": "document", "negatives": "document"}  # each column's role


@dataclass
class Batch:
    """One step's anchors: texts, stored guide vectors and ids per column, and the known false negatives."""

    texts: dict[str, list[str]]
    guide: dict[str, torch.Tensor]
    ids: dict[str, torch.Tensor]
    known: torch.Tensor
    unjudged: torch.Tensor | None

    def with_student(self, student: dict[str, torch.Tensor]) -> GuidedBatch:
        return GuidedBatch(*(Column(student[c], self.guide[c], self.ids[c]) for c in COLUMNS), self.known,
                           self.unjudged)


class Ragged:
    """A list of ids per row, as two numpy arrays: every row's ids end to end, and where each row starts."""

    def __init__(self, lists: pl.Series):
        self.starts = np.concatenate([[0], np.cumsum(lists.list.len().to_numpy())]).astype(np.int64)
        self.values = lists.explode().drop_nulls().to_numpy().astype(np.int64)  # an empty list explodes to a null

    def row(self, r: int) -> np.ndarray:
        return self.values[self.starts[r]: self.starts[r + 1]]


class RowTexts(Ragged):
    """Each row's texts as their positions in ``universe`` (the sorted ids of every text the rows use), end to end,
    for the batch planner: 4 bytes a text, where a Python set a row took ~1.2 kB (1.15 GB at a million rows of
    9 texts)."""

    def __init__(self, lists: pl.Series, universe: np.ndarray):
        super().__init__(lists)
        self.values, self.n_texts = np.searchsorted(universe, self.values).astype(np.int32), len(universe)

    def __len__(self) -> int:
        return len(self.starts) - 1


class TrainingData:
    """The mined rows, their texts, and the guide vectors of every text they use, in the role it has (queries
    in the query role, positives and negatives in the document role), moved to the training device once, so
    a step's guide blocks are an index lookup there. Only what the rows use is read, whatever the pool's size:
    the vectors in float16 (half the memory of float32; the loss computes their scores in float32), the texts
    as one Arrow column sorted by id (Python strings are made per batch), the id lists as numpy arrays.
    ``false_negatives``: each row's first that many known false negatives join its negatives column, where
    the loss's rules can count them as the anchor's extra positives (LossRules.false_negatives)."""

    def __init__(self, work: Path, negatives: int, device, false_negatives: int = 0):
        self.manifest = workdir.checked_mined_manifest(work)  # checks the chain embeddings -> candidates -> mined
        rows = pl.read_parquet(workdir.verified(work, self.manifest, "mine")).sort("anchor_id")
        self.anchor_ids = rows["anchor_id"].to_numpy()
        self.tasks = rows["task"].to_list()
        self.ids = {"queries": rows["query_id"].to_numpy(), "positives": rows["positive_id"].to_numpy()}
        documents = pl.concat_list(pl.col("negative_ids").list.head(negatives),
                                   pl.col("false_negative_ids").list.head(false_negatives))
        self.negatives = Ragged(rows.select(documents).to_series())
        # Known false negatives: mining's, and every positive of the anchor's query (a query repeated with other
        # positives, or with several qrels): another anchor's positive or negative in the batch may be one. Masked,
        # not taken as extra positives, so that the loss stays GISTEmbed's one-positive cross-entropy.
        positives = rows.group_by("query_id").agg(pl.col("positive_id").unique().alias("query_positives"))
        others = pl.col("query_positives").list.set_difference(pl.concat_list("positive_id"))  # not the row's own
        self.false_negatives = (rows.join(positives, on="query_id", how="left", maintain_order="left")
                                .select(pl.concat_list("false_negative_ids", others)).to_series().to_arrow())
        # Mining took the anchors the guide cannot judge out of its margin rule: so does the in-batch rule.
        self.unjudged = (is_unjudged(rows["candidates_above_positive"], rows["n_candidates"]).to_numpy()
                         if self.manifest["rules"].get("unjudged_rank_min") is not None else None)
        self.guide_ids = {"query": np.unique(self.ids["queries"]),
                          "document": np.unique(np.concatenate([self.ids["positives"], self.negatives.values]))}
        texts = workdir.read_texts(work, np.union1d(*self.guide_ids.values()))
        self.text_ids, self.texts = texts["text_id"].to_numpy(), texts["text"]
        self.guide = {role: on_device(VectorStore(work, role), ids, device) for role, ids in self.guide_ids.items()}
        self.device = device
        # Each row's texts, for the batch planner; built once, as every epoch plans from them.
        lists = rows.select(pl.concat_list("query_id", "positive_id", documents))
        self.row_texts = RowTexts(lists.to_series(), self.text_ids)

    def get_batch(self, rows: list[int]) -> Batch:
        ids = {column: values[rows] for column, values in self.ids.items()}
        ids["negatives"] = np.concatenate([self.negatives.row(r) for r in rows] + [np.empty(0, np.int64)])
        batch = self.lookup(rows, ids)
        batch.texts = {c: self.texts.gather(np.searchsorted(self.text_ids, v)).to_list() for c, v in ids.items()}
        return batch

    def lookup(self, rows, ids: dict[str, np.ndarray]) -> Batch:
        """A batch of ``rows`` whose texts per column have ``ids`` (a subset of what the rows use), without the
        texts: the stored guide vectors of each column in its role, the ids, the known false negatives."""
        return Batch(texts={},
                     guide={c: self.guide[ROLES[c]][torch.from_numpy(np.searchsorted(self.guide_ids[ROLES[c]], v))
                                                    .to(self.device)] for c, v in ids.items()},
                     ids={c: torch.from_numpy(v).to(self.device) for c, v in ids.items()},
                     known=torch.from_numpy(padded(self.false_negatives.take(rows), PAD_ID, np.int64)).to(self.device),
                     unjudged=None if self.unjudged is None else torch.from_numpy(self.unjudged[rows]).to(self.device))


def on_device(store: VectorStore, ids: np.ndarray, device, chunk: int = 1 << 15) -> torch.Tensor:
    """The stored vectors of ``ids`` on the device in float16, read a chunk at a time (the store returns float32:
    all at once, that copy would be twice the result)."""
    out = torch.empty((len(ids), store.dimension), dtype=torch.float16, device=device)
    for start in range(0, len(ids), chunk):
        out[start: start + chunk] = torch.from_numpy(store.get(ids[start: start + chunk]))
    return out


# -- batch plans ---------------------------------------------------------------------------------------


class _NextWithRoom:
    """Union-find over batch indices: the first batch at or after i that is not full, in near O(1)."""

    def __init__(self, n_batches: int):
        self.parent = list(range(n_batches + 1))  # index n_batches: no batch has room

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def close(self, i: int) -> None:
        self.parent[i] = i + 1


def _fill(rows: list[int], texts: RowTexts, batch_size: int, min_batch_size: int) -> tuple[list[list[int]], int]:
    n_batches = -(-len(rows) // batch_size)
    batches: list[list[int]] = [[] for _ in range(n_batches)]
    # Python arrays, not numpy: the loop reads and writes one item at a time, and a numpy item is a new scalar object.
    values, starts = array("i", texts.values.tobytes()), array("q", texts.starts.tobytes())
    after = array("i", bytes(4 * texts.n_texts))  # text -> the first batch that may still take it
    room = _NextWithRoom(n_batches)
    waiting = 0
    for row in rows:
        row_texts = values[starts[row]: starts[row + 1]]
        target = room.find(max(map(after.__getitem__, row_texts), default=0))
        if target == n_batches:
            waiting += 1
            continue
        batches[target].append(row)
        if len(batches[target]) == batch_size:
            room.close(target)
        for t in row_texts:
            after[t] = target + 1
    kept = [b for b in batches if len(b) >= min_batch_size and b]
    return kept, waiting + sum(len(b) for b in batches if len(b) < min_batch_size)


def plan_batches(texts: RowTexts, tasks: list[str], batch_size: int, seed: int, epoch: int,
                 task_batches: bool = False, min_batch_size: int = 1) -> tuple[list[list[int]], int]:
    """Row indices for each batch of one epoch, and how many rows wait for a later epoch: seeded, no text twice
    in a batch, optionally one task per batch (MEDI style), linear time.

    An epoch of n rows has ceil(n / batch_size) batches (per task with task batches). Rows are taken in a
    seeded shuffle; each goes into the first batch with room at or after the last batch holding one of its
    texts. A row that finds no such batch (its text repeats in more rows than there are batches, e.g. one
    positive shared by many queries) waits for the next epoch, which shuffles again; so do the rows of a batch
    left smaller than ``min_batch_size``.
    """
    rng = random.Random(seed * 100_003 + epoch)
    rows = list(range(len(texts)))
    rng.shuffle(rows)
    groups = [[r for r in rows if tasks[r] == task] for task in sorted(set(tasks))] if task_batches else [rows]
    batches, waiting = [], 0
    for group in groups:
        kept, left = _fill(group, texts, batch_size, min_batch_size)
        batches += kept
        waiting += left
    if task_batches:
        rng.shuffle(batches)
    return batches, waiting


def epoch_batches(data: TrainingData, config: TrainConfig, world: int, epoch: int, rank: int = 0) -> list[list[int]]:
    batches, waiting = plan_batches(data.row_texts, data.tasks, config.batch_size * world, config.seed, epoch,
                                    config.task_batches, min_batch_size=max(config.min_batch_size, world))  # a row per rank
    if waiting and rank == 0:
        print(f"train: epoch {epoch}: {waiting} of {len(data.tasks)} rows wait for a later epoch (a text they share "
              f"would repeat in a batch, or their batch is under --min-batch-size)", file=sys.stderr)
    return batches


# -- the step --------------------------------------------------------------------------------------------


def student_forward(model, texts: list[str], device, bf16: bool, prompt: str) -> torch.Tensor:
    """The student's sentence embeddings (float32) of prompt + text, with gradients; bf16 autocast on CUDA if
    asked. The prompt goes through preprocess, as encode does (pooling may leave its tokens out)."""
    if not texts:  # a rank whose anchors have no mined negatives; requires grad so that its gather joins backward
        return torch.zeros((0, model.get_embedding_dimension()), device=device, requires_grad=True)
    features = {k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(texts, prompt=prompt).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and "cuda" in str(device)):
        return model(features)["sentence_embedding"].float()


def train_step(model, loss_fn: GISTLoss, batch: Batch, optimizer, scheduler, config: TrainConfig, device,
               world: int) -> tuple:
    if config.mini_batch_size and sum(map(len, batch.texts.values())) > config.mini_batch_size:
        loss, masked = cached_backward(model, loss_fn, batch, config, device)
    else:
        # One forward pass per column: queries are short and documents long, so one pass over all three
        # pads every query to the longest document; measured 1.8x slower (MiniLM, batch 32 of the sample,
        # CPU: 2.46 s against 1.34 s a step).
        student = {c: student_forward(model, batch.texts[c], device, config.precision == "bf16", model.prompts[ROLES[c]])
                   for c in COLUMNS}
        loss, masked = summed_over_sizes(loss_fn, batch.with_student(student), config.matryoshka_dims)
        loss.backward()
    if world > 1:
        average_gradients([*model.parameters(), *loss_fn.parameters()], world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), masked


def cached_backward(model, loss_fn: GISTLoss, batch: Batch, config: TrainConfig, device, rows: int | None = None):
    """GradCache (Gao et al. 2021, arXiv 2101.06983): the whole batch's loss and gradients with the memory of
    one mini-batch. Embed each column mini-batch by mini-batch (a column's texts share its role's prompt)
    without gradients, take the loss's gradient with respect to those embeddings ``rows`` anchors at a time
    (default: the mini-batch size; GISTLoss.backward_by_rows), then embed each mini-batch again, with the
    same dropout, and push its part of that gradient through it. Gradients are averaged across ranks once,
    after the last."""
    size, states, cached, bf16 = config.mini_batch_size, [], [], config.precision == "bf16"
    pieces = [(c, batch.texts[c][start: start + size]) for c in COLUMNS for start in range(0, len(batch.texts[c]), size)]
    with torch.no_grad():
        for c, texts in pieces:
            states.append(_rng_state(device))
            cached.append(student_forward(model, texts, device, bf16, model.prompts[ROLES[c]]))
    student = torch.cat(cached).requires_grad_()
    columns = dict(zip(COLUMNS, student.split([len(batch.texts[c]) for c in COLUMNS])))
    loss, masked = summed_over_sizes(lambda b: loss_fn.backward_by_rows(b, rows or size), batch.with_student(columns),
                                     config.matryoshka_dims)
    for (c, texts), state, grad in zip(pieces, states, student.grad.split([len(t) for _, t in pieces])):
        with torch.random.fork_rng(devices=[device] if "cuda" in str(device) else []):
            _set_rng_state(state, device)
            student_forward(model, texts, device, bf16, model.prompts[ROLES[c]]).backward(grad)
    return loss, masked


def average_gradients(parameters, world: int) -> None:
    """All-reduce the gradients in one flat buffer. Instead of DDP's wrapper, which wants one forward pass per
    backward and the same passes on every rank, while a step here runs one per column (see train_step),
    GradCache one per mini-batch, and a rank whose anchors have no mined negatives one fewer."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for g, part in zip(grads, torch.split(flat, [g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def _rng_state(device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if "cuda" in str(device) else None


def _set_rng_state(state: tuple, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


# -- checkpoints -----------------------------------------------------------------------------------------


def as_record(config: TrainConfig) -> dict:
    """The config as JSON: nested settings as objects, paths as strings."""
    return json.loads(json.dumps(asdict(config), default=str))


def run_identity(config: TrainConfig, mined_manifest: dict) -> dict:
    """What a checkpoint must share with the run that resumes it: the mined tables and every setting that
    changes the sequence of batches or updates."""
    settings = {k: v for k, v in as_record(config).items()
                if k not in {"resume", "eval", "eval_steps", "save_steps", "report_to", "push_to_hub"}}
    settings["student"] = {k: v for k, v in settings["student"].items() if k != "device"}
    return {"mined_fingerprint": mined_manifest["fingerprint"], "settings": settings}


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, position: dict, loss_fn=None) -> None:
    final = out / workdir.CHECKPOINTS / workdir.checkpoint_name(step)
    tmp = tmp_name(final)
    save_files(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "loss": {} if loss_fn is None else loss_fn.state_dict()}, tmp / workdir.TRAINER_STATE)
    write_json_atomic(dict(position, step=step), tmp / workdir.POSITION)
    commit(tmp, final)  # a checkpoint directory exists whole or not at all


def latest_checkpoint(out: Path, identity: dict) -> Path | None:
    folder = out / workdir.CHECKPOINTS
    remove_stale_temps(folder)
    found = sorted(folder.glob(workdir.CHECKPOINT_GLOB)) if folder.exists() else []
    if found and read_json(found[-1] / workdir.POSITION).get("identity") != identity:
        raise UsageError(f"{found[-1]} was saved by a run with other mined tables or settings; "
                         "run without --resume to start over, or with the settings it was saved with")
    return found[-1] if found else None


def start(config: TrainConfig, out: Path, data: TrainingData, total_steps: int, device, rank: int, loss_fn=None):
    """The student, optimizer and schedule, fresh or from the newest checkpoint; and where the run stands. The
    loss's own parameters (embedding distillation's map) train and are checkpointed with the student."""
    identity = run_identity(config, data.manifest)
    if rank == 0 and not config.resume:  # a fresh run: no checkpoint or record of an earlier run may pass for its own
        shutil.rmtree(out / workdir.CHECKPOINTS, ignore_errors=True)
        (out / workdir.TRAINING_RECORD).unlink(missing_ok=True)
    checkpoint = latest_checkpoint(out, identity) if config.resume else None
    model = replace(config.student, device=device).load()
    if checkpoint is not None:  # its weights only: a tokenizer re-read from a save would be saved differently
        model.load_state_dict(load_model(str(checkpoint), device=device).state_dict())
    # The student's prompts per role, used in its forward passes and saved in its config, so that
    # encode_query and encode_document apply them.
    model.prompts.update(role_prompts(model, config.prompts))
    if config.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable()
    groups = [{"params": list(model.parameters())}]
    if loss_fn is not None and loss_fn.distill.embeddings:
        loss_fn.fit_embedding_map(model.get_embedding_dimension(), data.guide["document"].shape[1])
        loss_fn.to(device)
        own = list(loss_fn.parameters())  # none where the sizes are equal
        groups += [{"params": own, "lr": config.distill_map_lr}] if own else []
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    if checkpoint is None:
        return model, optimizer, scheduler, {"step": 0, "epoch": 0, "batch_index": 0}
    state = torch.load(checkpoint / workdir.TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if loss_fn is not None:
        loss_fn.load_state_dict(state.get("loss", {}))
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    position = read_json(checkpoint / workdir.POSITION)
    print(f"resuming from {checkpoint} at step {position['step']}", file=sys.stderr)
    return model, optimizer, scheduler, position


class Log:
    """metrics.jsonl, one JSON line per step or evaluation, written by rank 0. A fresh run starts it anew; a
    resumed one keeps what came up to its checkpoint, less a line cut short by a kill."""

    def __init__(self, out: Path, step: int, rank: int, reporter: Reporter | None = None):
        self.reporter = reporter  # --report-to: every record goes there too, from every rank (it reports on rank 0)
        self.path = out / workdir.METRICS if rank == 0 else None
        if self.path is None:
            return
        kept = []
        for line in self.path.read_text().splitlines() if step and self.path.exists() else []:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except ValueError:
                pass
        write_bytes_atomic("".join(line + "\n" for line in kept).encode(), self.path)

    def write(self, record: dict) -> None:
        if self.reporter is not None:
            self.reporter.log(record)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")


# -- evaluation ------------------------------------------------------------------------------------------


def make_evaluator(folder: Path, name: str, prompts: dict | None = None, sizes: tuple[int, ...] = ()):
    """Retrieval on a split; ``prompts`` per role ("query", "document"), else the model's own (encode_query's).
    With ``sizes``, also with the embeddings cut to each size (metrics named dim<size>_...)."""
    from sentence_transformers.sentence_transformer.evaluation import (InformationRetrievalEvaluator,
                                                                       SequentialEvaluator)

    queries = pl.read_parquet(folder / "queries.parquet")
    corpus = pl.read_parquet(folder / "corpus.parquet")
    qrels = pl.read_parquet(folder / "qrels.parquet").group_by("query_id").agg("doc_id")
    evaluators = [InformationRetrievalEvaluator(
        queries=dict(queries.select("query_id", "text").iter_rows()),
        corpus=dict(corpus.select("doc_id", "text").iter_rows()),
        relevant_docs={q: set(d) for q, d in qrels.iter_rows()},
        name=size_name, truncate_dim=size, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10],
        precision_recall_at_k=[10, 100], map_at_k=[100], show_progress_bar=False, batch_size=128,
        **({"query_prompt": prompts["query"], "corpus_prompt": prompts["document"]} if prompts else {}),
    ) for size_name, size in [(name, None)] + [(f"dim{size}", size) for size in sizes]]
    return evaluators[0] if len(evaluators) == 1 else SequentialEvaluator(evaluators)


def evaluate(model, evaluator, log: Log, step: int, rank: int) -> dict:
    model.eval()
    scores = headline(evaluator(model)) if rank == 0 else {}
    model.train()
    log.write({"step": step, **{f"eval_{k}": v for k, v in scores.items()}})
    return scores


def headline(metrics: dict) -> dict:
    """NDCG@10, MRR@10 and recall@100 of the whole embeddings, and as dim<size>_... of each cut size."""
    pick = ("ndcg@10", "mrr@10", "recall@100")
    return {(size.group(0) if size else "") + short: round(v, 4) for short in pick for k, v in metrics.items()
            if k.endswith(f"cosine_{short}") for size in [re.match(r"dim\d+_", k)]}


# -- the loop --------------------------------------------------------------------------------------------


def train(work: Path, out: Path, config: TrainConfig = TrainConfig()) -> dict | None:
    """Fine-tune ``config.student`` on the mined tables of ``work`` (``pipeline.mask``) into ``out``, with the
    guide's stored vectors for the in-batch rule: the model, its checkpoints, metrics.jsonl and
    gist_training.json. Under torchrun (WORLD_SIZE > 1) every rank calls it. Returns the held-out scores after
    training (``config.eval``; None without)."""
    work, out = Path(work), Path(out)
    if config.push_to_hub:
        hub.check_can_push(config.push_to_hub)
    loss_fn = loss_from(config)  # before any work: a bad combination of rules stops here
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    reporter = Reporter(config.report_to, out, rank, {"learning_rate": config.lr, "seed": config.seed,
                                                      "per_device_train_batch_size": config.batch_size,
                                                      "weight_decay": config.weight_decay})
    device = config.student.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    data = TrainingData(work, config.negatives_per_anchor, device, config.false_negatives_in_batch)
    if rank == 0:
        say_rules(config, data.manifest)
    batches = epoch_batches(data, config, world, 0, rank)  # its length sets the schedule
    total_steps = config.max_steps or max(1, int(config.epochs * len(batches)))
    model, optimizer, scheduler, position = start(config, out, data, total_steps, device, rank, loss_fn)
    step, epoch, batch_index = position["step"], position["epoch"], position["batch_index"]
    full = model.get_embedding_dimension()
    if any(size > full for size in config.matryoshka_dims):
        raise UsageError(f"--matryoshka-dims {config.matryoshka_dims}: the student's embeddings have {full} dimensions")
    log = Log(out, step, rank, reporter)
    cut = tuple(size for size in config.matryoshka_dims if size < full)
    evaluator = make_evaluator(config.eval, "eval", model.prompts, cut) if config.eval else None
    before = evaluate(model, evaluator, log, step, rank) if evaluator and step == 0 else None

    model.train()
    if epoch:  # a resumed run continues in a later epoch
        batches = epoch_batches(data, config, world, epoch, rank)
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=rank != 0)
    started = time.perf_counter()
    while step < total_steps:
        if batch_index >= len(batches):
            epoch, batch_index = epoch + 1, 0
            batches = epoch_batches(data, config, world, epoch, rank)
        rows = batches[batch_index][rank::world]  # ranks' shares differ by one at most
        batch_index, step = batch_index + 1, step + 1
        batch = data.get_batch(rows)
        loss, masked = train_step(model, loss_fn, batch, optimizer, scheduler, config, device, world)
        loss, masked = global_mean(loss, masked, world)
        log.write({"step": step, "epoch": epoch, "loss": loss, "masked_fraction": round(masked, 4),
                   "anchors": len(rows), "negatives": len(batch.texts["negatives"]),
                   "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 2)})
        progress.set_postfix(loss=f"{loss:.4f}", masked=f"{masked:.3f}")
        progress.update(1)
        if config.save_steps and step % config.save_steps == 0 and rank == 0:
            save_checkpoint(out, step, model, optimizer, scheduler,
                            {"epoch": epoch, "batch_index": batch_index, "identity": run_identity(config, data.manifest)},
                            loss_fn)
        if evaluator and config.eval_steps and step % config.eval_steps == 0 and step < total_steps:
            evaluate(model, evaluator, log, step, rank)
    progress.close()
    after = evaluate(model, evaluator, log, step, rank) if evaluator else None
    reporter.close()
    if rank == 0:
        save_model(config, work, out, model, data.manifest, step, world, before, after)
        if config.push_to_hub:
            print(f"train: pushed {out} to {hub.push(out, config.push_to_hub)}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return after


def main(argv=None, prog: str = "python -m train.run") -> None:
    args = build_parser(prog).parse_args(argv)
    train(args.work, args.out, config_from(args))


def loss_from(config: TrainConfig) -> GISTLoss:
    guided, control, self_filter = GUIDE_FILTERS[config.guide_filter]
    try:
        distill = Distillation(config.distill, config.distill_weight, config.distill_temperature, config.distill_mask)
    except ValueError as err:
        raise UsageError(f"--distill {config.distill}: {err}") from None
    if distill.embeddings and config.matryoshka_dims:
        raise UsageError(f"--distill {config.distill}: embedding distillation maps the whole embeddings, not with "
                         "--matryoshka-dims")
    try:
        rules = LossRules(self_filter, config.self_margin, config.hardness_strength, config.hardness_negatives,
                          config.false_negatives, config.promote_margin, config.suspect_weight)
        return GISTLoss(config.temperature, config.in_batch_margin_strategy, config.in_batch_margin, guided=guided,
                        control=control, rules=rules, distill=distill)
    except ValueError as err:
        raise UsageError(f"--guide-filter {config.guide_filter}: {err}") from None


def global_mean(loss: torch.Tensor, masked: torch.Tensor, world: int) -> tuple[float, float]:
    """The figures of the global batch, not this rank's share (the loss is scaled so that its mean is)."""
    if world > 1:
        shown = torch.stack([loss, masked.to(loss.dtype)])
        dist.all_reduce(shown)
        loss, masked = shown / world
    return loss.item(), masked.item()


def say_rules(config: TrainConfig, manifest: dict) -> None:
    """The two rules stack: mining removed its false negatives, the loss masks in-batch ones."""
    mined_rules = ", ".join(f"{k} {v}" for k, v in manifest["rules"].items() if v is not None)
    in_batch = {"precomputed": f"{config.in_batch_margin_strategy} margin {config.in_batch_margin}",
                "none": "off (plain in-batch loss)",
                "random": "control: as many logits as the guide masks, at random",
                "hardest": "control: as many logits as the guide masks, the student's highest",
                "self": f"the student's own, margin {config.self_margin}",
                "guide+self": f"{config.in_batch_margin_strategy} margin {config.in_batch_margin} or the student's own, "
                              f"margin {config.self_margin}"}[config.guide_filter]
    if manifest["rules"].get("unjudged_rank_min") is not None and GUIDE_FILTERS[config.guide_filter][0]:
        in_batch += " (not for anchors the guide cannot judge, as in mining)"
    if config.false_negatives == "positives":
        in_batch += f"; known false negatives and guide scores above the positive + {config.promote_margin} are positives"
    if config.suspect_weight:
        in_batch += f"; suspects weighted {config.suspect_weight} instead of masked"
    if config.hardness_strength:
        in_batch += f"; hardness weighting {config.hardness_strength} on {config.hardness_negatives} negatives"
    if config.distill != "none":
        in_batch += (f"; distilling the guide's {config.distill}, weight {config.distill_weight}"
                     + (f", teacher temperature {config.distill_temperature}, suspects out of {config.distill_mask}"
                        if "scores" in config.distill else ""))
    print(f"train: mined negatives chosen under: {mined_rules}; in-batch guide filter: {in_batch}", file=sys.stderr)


def save_files(model, path: Path) -> None:
    """A fast tokenizer keeps its last call's padding and truncation, and saves them in tokenizer.json: reset
    them, so that what is saved does not depend on whether a batch was tokenized first (a resumed run)."""
    backend = getattr(getattr(model[0], "tokenizer", None), "_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    model.save(str(path))


def save_model(config: TrainConfig, work: Path, out: Path, model, manifest: dict, step: int, world: int, before, after) -> None:
    save_files(model, out)
    settings = dict(as_record(config), work=str(work), out=str(out))
    record = {"settings": settings, "steps": step, "world_size": world, "mined_fingerprint": manifest["fingerprint"],
              "embed_fingerprint": manifest["embed_fingerprint"], "mining_rules": manifest["rules"],
              "eval_before": before, "eval_after": after}
    command = cli.command("train.run", ["--work", work, "--out", out, "--student", config.student.name,
                                        *to_argv(config.student), *to_argv(config.prompts),
                                        *to_argv(replace(config, resume=False))])  # a resumed run's card is the same
    card.write(out, record, work, command)  # over the card sentence-transformers' save wrote
    # Written last: its presence says the model beside it is complete.
    write_json_atomic(record, out / workdir.TRAINING_RECORD)
    if after:
        print(f"eval after training:  {after}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main)
