"""Stage 3, the loop: fine-tune a student on mined tables with GISTEmbed's guided in-batch loss, no guide forward
pass. Its parts, each in its own module: the settings (config), the rows and stored guide vectors (data), the
batch plans (batches), the step (step), checkpoints, metrics (reporting), evaluation and the saved output.
The helpers come first; ``train`` at the end is the loop.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup

from gist_mining import workdir
from gist_mining.distill import Distillation
from gist_mining.errors import UsageError
from gist_mining.loss import GUIDE_FILTERS, GISTLoss, LossRules
from gist_mining.models import load_model, role_prompts
from gist_mining.training import hub
from gist_mining.training.batches import epoch_plan
from gist_mining.training.checkpoints import (
    checkpoint_due,
    claim_output,
    latest_checkpoint,
    prune_checkpoints,
    random_states,
    restore,
    run_identity,
    save_checkpoint,
)
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import TrainingData, guide_cache_bytes
from gist_mining.training.evaluate import evaluate, make_evaluator
from gist_mining.training.output import save_model
from gist_mining.training.reporting import Log, Reporter
from gist_mining.training.step import global_mean, train_step
from gist_mining.training.teacher_data import Teacher, cross_encoder_scores


def loss_from(config: TrainConfig) -> GISTLoss:
    choice = GUIDE_FILTERS[config.guide_filter]
    try:
        distill = Distillation(config.distill, config.distill_weight, config.distill_temperature, config.distill_mask,
                               config.distill_corpus, config.distill_margin_mse)
    except ValueError as err:
        raise UsageError(f"--distill {config.distill}: {err}") from None
    if distill.embeddings and config.matryoshka_dims:
        raise UsageError(f"--distill {config.distill}: embedding distillation maps the whole embeddings, not with "
                         "--matryoshka-dims")
    try:
        rules = LossRules(choice.self_filter, config.self_margin, config.hardness_strength, config.hardness_negatives,
                          config.false_negatives, config.promote_margin, config.suspect_weight)
        return GISTLoss(config.temperature, config.in_batch_margin_strategy, config.in_batch_margin,
                        guided=choice.guided, control=choice.control, rules=rules, distill=distill)
    except ValueError as err:
        raise UsageError(f"--guide-filter {config.guide_filter}: {err}") from None


def say_rules(config: TrainConfig, manifest: workdir.MinedManifest) -> None:
    """The two rules stack: mining removed its false negatives, the loss masks in-batch ones."""
    mined_rules = manifest.rules.described()
    choice = GUIDE_FILTERS[config.guide_filter]
    in_batch = choice.says.format(strategy=config.in_batch_margin_strategy, margin=config.in_batch_margin,
                                  self_margin=config.self_margin)
    if manifest.rules.unjudged_rank_min is not None and choice.guided:
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
                        if "scores" in config.distill else "")
                     + (f", {config.distill_corpus} corpus texts a batch" if config.distill_corpus else ""))
    if config.distill_margin_mse:
        in_batch += f"; MarginMSE on the cross-encoder's scores, weight {config.distill_margin_mse}"
    print(f"train: mined negatives chosen under: {mined_rules}; in-batch guide filter: {in_batch}", file=sys.stderr)


def epoch_batches(data: TrainingData, config: TrainConfig, world: int, epoch: int, rank: int = 0) -> Sequence[list[int]]:
    batches = epoch_plan(config.task_batching, data.plan_rows, config.batch_size * world, config.seed, epoch,
                         config.task_batches, min_batch_size=max(config.min_batch_size, world))  # a row per rank
    if config.task_batching == "paper":  # GISTEmbed's chunks: the same rows are left out every epoch
        if not batches:
            raise UsageError(f"--task-batching paper: no batch of {config.batch_size * world} rows of one task (each "
                             "chunk of the task-sorted rows spans two tasks); use a smaller --batch-size")
        if batches.waiting and rank == 0 and epoch == 0:
            print(f"train: {batches.waiting} of {len(data)} rows are in no batch (--task-batching paper: their chunk "
                  "of the task-sorted rows spans two tasks, or is the short last one)", file=sys.stderr)
    elif batches.waiting and rank == 0:
        print(f"train: epoch {epoch}: {batches.waiting} of {len(data)} rows wait for a later epoch (a text they share "
              f"would repeat in a batch, or their batch is under --min-batch-size)", file=sys.stderr)
    return batches


def training_state(config: TrainConfig, out: Path, total_steps: int, device, rank: int, loss_fn: GISTLoss,
                   guide_dimension: int):
    """The student, optimizer and schedule, fresh or from the newest checkpoint (claim_output made them this
    run's); and where the run stands. The loss's own parameters (embedding distillation's map from the student's
    size to ``guide_dimension``) train and are checkpointed with the student."""
    checkpoint = latest_checkpoint(out)
    model = replace(config.student, device=device).load()
    if checkpoint is not None:  # its weights only: a tokenizer re-read from a save would be saved differently
        model.load_state_dict(load_model(str(checkpoint), device=device).state_dict())
    # The student's prompts per role, used in its forward passes and saved in its config, so that
    # encode_query and encode_document apply them.
    model.prompts.update(role_prompts(model, config.prompts))
    if config.gradient_checkpointing:
        model[0].auto_model.gradient_checkpointing_enable()
    groups = [{"params": list(model.parameters())}]
    if loss_fn.distill.embeddings:
        loss_fn.fit_embedding_map(model.get_embedding_dimension(), guide_dimension)
        loss_fn.to(device)
        own = list(loss_fn.parameters())  # none where the sizes are equal
        groups += [{"params": own, "lr": config.distill_map_lr}] if own else []
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    if checkpoint is None:
        return model, optimizer, scheduler, {"step": 0, "epoch": 0, "batch_index": 0}
    return model, optimizer, scheduler, restore(checkpoint, optimizer, scheduler, rank, loss_fn)


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
    manifest = workdir.checked_mined_manifest(work)
    if config.distill_margin_mse:
        cross_encoder_scores(work, manifest)  # refuses before anything is written
    identity = run_identity(config, manifest.fingerprint, world)
    finished = claim_output(out, identity, config.overwrite, rank)
    if rank == 0 and finished is None:
        prune_checkpoints(out, config.keep_checkpoints)
    if world > 1:
        dist.barrier()  # rank 0 has removed another run's state (--overwrite) and old checkpoints before any rank reads them
    if finished is not None:
        if rank == 0:
            print(f"train: {out} is complete ({finished.steps} steps, from the same mined tables and settings); "
                  "nothing to do", file=sys.stderr)
        if world > 1:
            dist.destroy_process_group()
        return finished.eval_after
    reporter = Reporter(config.report_to, out, rank, {"learning_rate": config.lr, "seed": config.seed,
                                                      "per_device_train_batch_size": config.batch_size,
                                                      "weight_decay": config.weight_decay})
    device = config.student.device or (f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    random.seed(config.seed)
    torch.manual_seed(config.seed)

    data = TrainingData(work, config.negatives_per_anchor, device, config.false_negatives_in_batch,
                        guide_cache_bytes(config.guide_cache))
    teacher = (Teacher(work, loss_fn.distill, data.manifest, data.rows, config.negatives_per_anchor, config.seed,
                       device) if config.distill_corpus or config.distill_margin_mse else None)
    if rank == 0:
        say_rules(config, data.manifest)
    batches = epoch_batches(data, config, world, 0, rank)  # its length sets the schedule
    total_steps = config.max_steps or max(1, int(config.epochs * len(batches)))
    model, optimizer, scheduler, position = training_state(config, out, total_steps, device, rank, loss_fn,
                                                           data.guide_dimension)
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
    started = last_saved = time.perf_counter()
    while step < total_steps:
        if batch_index >= len(batches):
            epoch, batch_index = epoch + 1, 0
            batches = epoch_batches(data, config, world, epoch, rank)
        rows = batches[batch_index][rank::world]  # ranks' shares differ by one at most
        batch_index, step = batch_index + 1, step + 1
        batch = data.get_batch(rows)
        if teacher is not None:
            teacher.add(batch, rows, (step, rank))
        loss, masked = train_step(model, loss_fn, batch, optimizer, scheduler, device, world,
                                  bf16=config.precision == "bf16", mini_batch_size=config.mini_batch_size,
                                  sizes=config.matryoshka_dims)
        loss, masked = global_mean(loss, masked, world)
        log.write({"step": step, "epoch": epoch, "loss": loss, "masked_fraction": round(masked, 4),
                   "anchors": len(rows), "negatives": len(batch.texts["negatives"]),
                   "lr": scheduler.get_last_lr()[0], "seconds": round(time.perf_counter() - started, 2)})
        progress.set_postfix(loss=f"{loss:.4f}", masked=f"{masked:.3f}")
        progress.update(1)
        if checkpoint_due(config, step, total_steps, time.perf_counter() - last_saved, device, world):
            states = random_states(device, world)
            if rank == 0:
                save_checkpoint(out, step, model, optimizer, scheduler, {"epoch": epoch, "batch_index": batch_index,
                                "identity": identity}, config.keep_checkpoints, states, loss_fn)
            last_saved = time.perf_counter()
        if evaluator and config.eval_steps and step % config.eval_steps == 0 and step < total_steps:
            evaluate(model, evaluator, log, step, rank)
    progress.close()
    after = evaluate(model, evaluator, log, step, rank) if evaluator else None
    reporter.close()
    if rank == 0:
        save_model(config, work, out, model, data.manifest, step, world, before, after, identity)
        if config.push_to_hub:
            print(f"train: pushed {out} to {hub.push(out, config.push_to_hub)}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()
    return after
