"""Stage 3: fine-tune a student on mined tables with GISTEmbed's guided in-batch loss, no guide forward pass.

    python -m train.run --work runs/sample --out models/gist-minilm --eval data/sample/val
    torchrun --nproc-per-node 2 -m train.run --work runs/sample --out models/gist-minilm

Each step: B anchors (query, positive, their first N mined negatives), the student embeds them, and the
guide's view of the same texts is a lookup into the embed stage's stored vectors. gist_mining.loss masks
the in-batch candidates the guide rates above each anchor's threshold, and the anchors' precomputed false
negatives, then takes cross-entropy. Checkpoints hold everything needed for --resume to continue exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from gist_mining import cli, workdir
from gist_mining.batches import plan_batches
from gist_mining.errors import UsageError
from gist_mining.ids import PAD_ID
from gist_mining.loss import gist_loss
from gist_mining.margins import STRATEGIES
from gist_mining.models import DEFAULT_STUDENT, load_model
from gist_mining.storage import (commit, read_json, remove_stale_temps, tmp_name, write_bytes_atomic,
                                  write_json_atomic)
from gist_mining.workdir import VectorStore

# -- config: every default in one place ------------------------------------------------------------------


@dataclass(frozen=True)
class Defaults:
    """The settings the README's results were measured with; pipeline.run trains with these too."""

    batch_size: int = 32
    lr: float = 2e-5
    temperature: float = 0.05
    negatives_per_anchor: int = 1
    margin_strategy: str = "absolute"  # GISTEmbed's in-batch rule: mask what the guide scores above the positive
    margin: float = 0.0


def parse_args(argv=None) -> argparse.Namespace:
    d = Defaults()
    p = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.split("\n")[0])
    p.add_argument("--work", required=True, type=Path, help="work directory with mined/ (pipeline.mask)")
    p.add_argument("--out", required=True, type=Path, help="where the trained sentence-transformers model goes")
    p.add_argument("--model", default=DEFAULT_STUDENT, help="student: bundled name, local directory or HF id")
    cli.model_arguments(p)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="anchors per step (per process)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None, help="overrides --epochs")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--margin-strategy", choices=STRATEGIES, default=d.margin_strategy, help="in-batch guide rule")
    p.add_argument("--margin", type=float, default=d.margin)
    p.add_argument("--negatives-per-anchor", type=int, default=d.negatives_per_anchor)
    p.add_argument("--task-batches", action="store_true", help="each batch from one task (MEDI style)")
    p.add_argument("--max-seq-length", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--guide-filter", choices=["precomputed", "none"], default="precomputed")
    p.add_argument("--eval", type=Path, default=None, help="retrieval split: queries, corpus, qrels .parquet")
    p.add_argument("--eval-steps", type=int, default=0, help="evaluate every N steps (0: before and after only)")
    p.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (0: never)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


# -- data ------------------------------------------------------------------------------------------------


def load_training_rows(work: Path, negatives: int) -> tuple[pl.DataFrame, dict]:
    """The mined tables, checked against the chain (embeddings -> candidates -> mined) and their checksums."""
    manifest = workdir.mined(work)
    rows = pl.read_parquet(workdir.verified(work, manifest, "mine")).sort("anchor_id")
    return rows.select("anchor_id", "query_id", "positive_id", "task", "false_negative_ids",
                       pl.col("negative_ids").list.head(negatives)), manifest


class Batches:
    """Turns planned rows into texts, ids and guide vectors for one step.

    The guide vectors of every text the rows use are moved to the training device once, so a step's
    guide blocks are an index lookup there, with no host reads or copies.
    """

    def __init__(self, work: Path, rows: pl.DataFrame, device):
        self.device = device
        self.text_of = dict(workdir.read_table(work, workdir.TEXTS, ["text_id", "text"]).iter_rows())
        self.query_ids = rows["query_id"].to_numpy()
        self.positive_ids = rows["positive_id"].to_numpy()
        self.negative_ids = rows["negative_ids"].to_list()
        self.false_negatives = rows["false_negative_ids"].to_list()
        used = np.unique(np.concatenate([self.query_ids, self.positive_ids,
                                         rows["negative_ids"].explode().drop_nulls().to_numpy()]))
        self.guide_ids = used
        self.guide = torch.from_numpy(VectorStore(work).get(used)).to(device)

    def text_sets(self) -> list[set[int]]:
        return [{q, p, *n} for q, p, n in zip(self.query_ids.tolist(), self.positive_ids.tolist(), self.negative_ids)]

    def get(self, batch: list[int]) -> dict:
        ids = {
            "q": self.query_ids[batch],
            "p": self.positive_ids[batch],
            "n": np.array([i for r in batch for i in self.negative_ids[r]], dtype=np.int64),
        }
        width = max([len(self.false_negatives[r]) for r in batch] + [1])
        known = np.full((len(batch), width), PAD_ID, dtype=np.int64)
        for row, r in enumerate(batch):
            known[row, : len(self.false_negatives[r])] = self.false_negatives[r]
        out = {"known": torch.from_numpy(known).to(self.device)}
        for key, values in ids.items():
            out[f"{key}_texts"] = [self.text_of[i] for i in values.tolist()]
            out[f"{key}_ids"] = torch.from_numpy(values).to(self.device)
            rows = torch.from_numpy(np.searchsorted(self.guide_ids, values)).to(self.device)
            out[f"{key}_guide"] = self.guide[rows]
        return out


def to_device(features: dict, device) -> dict:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in features.items()}


def student_embedder(model, device, bf16: bool):
    """texts -> the student's sentence embeddings (float32), with gradients; bf16 autocast on CUDA if asked."""

    def embed(texts: list[str]) -> torch.Tensor:
        if not texts:  # an anchor set with no mined negatives; requires grad so that every rank's gather
            # of this column joins the same backward collective
            return torch.zeros((0, model.get_embedding_dimension()), device=device, requires_grad=True)
        features = to_device(model.preprocess(texts), device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and "cuda" in str(device)):
            return model(features)["sentence_embedding"].float()

    return embed


def batch_loss(embed, b: dict, args) -> tuple[torch.Tensor, torch.Tensor]:
    """The student embeds the batch; the guide's side is b's stored vectors. Returns loss and masked fraction."""
    # One forward per column: queries, positives and negatives differ in length, so less padding.
    q, p, n = (embed(b[f"{column}_texts"]) for column in "qpn")
    return gist_loss(q, p, n, b["q_guide"], b["p_guide"], b["n_guide"], b["q_ids"], b["p_ids"], b["n_ids"],
                     b["known"], temperature=args.temperature, margin_strategy=args.margin_strategy,
                     margin=args.margin, guided=args.guide_filter == "precomputed", return_mask_fraction=True)


def average_gradients(model, world: int) -> None:
    """All-reduce the gradients in one flat buffer. Used instead of DDP's wrapper, which expects one forward
    per backward, while a step here runs one per column."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for g, part in zip(grads, torch.split(flat, [g.numel() for g in grads])):
        g.copy_(part.view_as(g))


# -- checkpoints -----------------------------------------------------------------------------------------


def run_identity(args, mined_manifest: dict) -> dict:
    """What a checkpoint must share with the run that resumes it: the mined tables and every setting that
    changes the sequence of batches or updates."""
    ignored = {"resume", "out", "device", "eval", "eval_steps", "save_steps", "work"}
    return {"mined_fingerprint": mined_manifest["fingerprint"],
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ignored}}


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, position: dict) -> None:
    final = out / "checkpoints" / f"step-{step:07d}"
    tmp = tmp_name(final)
    model.save(str(tmp))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / "trainer_state.pt")
    write_json_atomic(dict(position, step=step), tmp / "position.json")
    commit(tmp, final)  # a checkpoint directory exists whole or not at all


def latest_checkpoint(out: Path, identity: dict) -> Path | None:
    folder = out / "checkpoints"
    remove_stale_temps(folder)
    found = sorted(folder.glob("step-*")) if folder.exists() else []
    if found and read_json(found[-1] / "position.json").get("identity") != identity:
        raise UsageError(f"{found[-1]} was saved by a run with other mined tables or settings; "
                         "run without --resume to start over, or with the settings it was saved with")
    return found[-1] if found else None


def start_log(out: Path, step: int) -> Path:
    """A fresh run starts its log anew; a resumed one keeps what came up to its checkpoint. A line cut
    short by a kill is dropped."""
    log_path = out / "metrics.jsonl"
    kept = []
    for line in log_path.read_text().splitlines() if step and log_path.exists() else []:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except ValueError:
            pass
    write_bytes_atomic("".join(line + "\n" for line in kept).encode(), log_path)
    return log_path


# -- evaluation ------------------------------------------------------------------------------------------


def make_evaluator(folder: Path, name: str):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    queries = pl.read_parquet(folder / "queries.parquet")
    corpus = pl.read_parquet(folder / "corpus.parquet")
    qrels = pl.read_parquet(folder / "qrels.parquet").group_by("query_id").agg("doc_id")
    return InformationRetrievalEvaluator(
        queries=dict(queries.select("query_id", "text").iter_rows()),
        corpus=dict(corpus.select("doc_id", "text").iter_rows()),
        relevant_docs={q: set(d) for q, d in qrels.iter_rows()},
        name=name, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[10, 100],
        map_at_k=[100], show_progress_bar=False, batch_size=128,
    )


def headline(metrics: dict) -> dict:
    pick = {"ndcg@10": "ndcg@10", "mrr@10": "mrr@10", "recall@100": "recall@100"}
    return {short: round(v, 4) for short, key in pick.items() for k, v in metrics.items() if k.endswith(f"cosine_{key}")}


# -- the loop --------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    args = parse_args(argv)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    device = args.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    rows, mined_manifest = load_training_rows(args.work, args.negatives_per_anchor)
    if rank == 0:  # the two rules stack: mining removed its false negatives, the loss masks in-batch ones
        mined_rules = ", ".join(f"{k} {v}" for k, v in mined_manifest["rules"].items() if v is not None)
        in_batch = (f"{args.margin_strategy} margin {args.margin}" if args.guide_filter == "precomputed"
                    else "off (plain in-batch loss)")
        print(f"train: mined negatives chosen under: {mined_rules}; in-batch guide filter: {in_batch}", file=sys.stderr)
    data = Batches(args.work, rows, device)
    text_sets, tasks = data.text_sets(), rows["task"].to_list()
    def epoch_batches(epoch: int) -> list[list[int]]:
        batches = plan_batches(text_sets, tasks, args.batch_size * world, args.seed, epoch, args.task_batches)
        return [b for b in batches if len(b) >= world]  # every rank needs an anchor
    steps_per_epoch = len(epoch_batches(0))
    total_steps = args.max_steps or max(1, int(args.epochs * steps_per_epoch))

    identity = run_identity(args, mined_manifest)
    if rank == 0 and not args.resume:  # a fresh run: no checkpoint or record of an earlier run may be mistaken for its own
        shutil.rmtree(args.out / "checkpoints", ignore_errors=True)
        (args.out / workdir.TRAINING_RECORD).unlink(missing_ok=True)
    checkpoint = latest_checkpoint(args.out, identity) if args.resume else None
    model = load_model(str(checkpoint or args.model), device=device, max_seq_length=args.max_seq_length,
                       revision=None if checkpoint else args.revision, trust_remote_code=args.trust_remote_code)
    if args.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total_steps), total_steps)
    step, epoch, batch_index = 0, 0, 0
    if checkpoint is not None:
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        position = read_json(checkpoint / "position.json")
        step, epoch, batch_index = position["step"], position["epoch"], position["batch_index"]
        print(f"resuming from {checkpoint} at step {step}", file=sys.stderr)

    evaluator = make_evaluator(args.eval, "eval") if args.eval else None
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = start_log(args.out, step) if rank == 0 else None

    def log(record: dict) -> None:
        if rank == 0:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def evaluate() -> dict:
        model.eval()
        scores = headline(evaluator(model)) if rank == 0 else {}
        model.train()
        log({"step": step, **{f"eval_{k}": v for k, v in scores.items()}})
        return scores

    before = evaluate() if evaluator and step == 0 else None
    if before:
        print(f"eval before training: {before}", file=sys.stderr)

    embed = student_embedder(model, device, args.bf16)

    model.train()
    batches = epoch_batches(epoch)
    progress = tqdm(total=total_steps, initial=step, desc="train", disable=rank != 0)
    started = time.perf_counter()
    while step < total_steps:
        if batch_index >= len(batches):
            epoch, batch_index = epoch + 1, 0
            batches = epoch_batches(epoch)
        global_batch = batches[batch_index]
        mine = global_batch[rank::world]  # ranks' shares differ by one at most, even in a short last batch
        batch_index += 1
        b = data.get(mine)
        loss, masked = batch_loss(embed, b, args)
        loss.backward()
        if distributed:
            average_gradients(model, world)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if distributed:  # log the global batch's figures, not rank 0's share
            shown = torch.stack([loss.detach(), masked])
            dist.all_reduce(shown)
            loss, masked = shown / world
        record = {"step": step, "epoch": epoch, "loss": loss.item(), "masked_fraction": round(masked.item(), 4),
                  "anchors": len(mine), "negatives": len(b["n_texts"]),
                  "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 2)}
        log(record)
        progress.set_postfix(loss=f"{record['loss']:.4f}", masked=f"{record['masked_fraction']:.3f}")
        progress.update(1)
        if args.save_steps and step % args.save_steps == 0 and rank == 0:
            save_checkpoint(args.out, step, model, optimizer, scheduler,
                            {"epoch": epoch, "batch_index": batch_index, "identity": identity})
        if evaluator and args.eval_steps and step % args.eval_steps == 0 and step < total_steps:
            evaluate()
    progress.close()

    after = evaluate() if evaluator else None
    if rank == 0:
        model.save(str(args.out))
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        # Written last: its presence says the model beside it is complete.
        write_json_atomic({"settings": settings, "steps": step, "world_size": world,
                           "mined_fingerprint": mined_manifest["fingerprint"],
                           "embed_fingerprint": mined_manifest["embed_fingerprint"],
                           "mining_rules": mined_manifest["rules"], "eval_before": before, "eval_after": after},
                          args.out / workdir.TRAINING_RECORD)
        if after:
            print(f"eval after training:  {after}", file=sys.stderr)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    cli.run(main)
