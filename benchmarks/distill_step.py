"""Step time of each distillation rule (train.run --distill) against the default loss, in one run.

    flock /tmp/bench.lock python -m benchmarks.distill_step --work runs/ablation/sample/guided --steps 8

One process, the same batches (query, positive, one mined negative per anchor) for every rule; each step is
train.run's own train_step (forward per column, loss, backward, clipping, AdamW, schedule) of its own copy of the
student, with the loss train.run builds from the options (and the map embedding distillation trains). The rules take
turns batch by batch, each going first in turn, so that machine noise falls on all alike; the first round is a
warm-up and does not count. Target (issue #35): a distillation step within 1.1x of a default step. Also the loss
alone (forward and backward from fixed student vectors of the first batch, --loss-repeats times per rule, taking
turns): what distillation adds to a step, whose student passes are the same for every rule. The corpus rules
(--distill-corpus 16) also read and embed their corpus texts each step, and that counts: reading them is part of the
timed step there.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from transformers import get_constant_schedule

from benchmarks.common import figure, table
from gist_mining.models import load_model
from gist_mining.training.batches import EpochPlan
from gist_mining.training.data import TrainingData
from gist_mining.training.loop import loss_from
from gist_mining.training.step import student_forward, train_step
from gist_mining.training.teacher_data import Teacher
from train import run as train_command

RULES = {"default": [], "scores": ["--distill", "scores"], "embeddings": ["--distill", "embeddings"],
         "scores+embeddings": ["--distill", "scores+embeddings"],
         "scores+corpus16": ["--distill", "scores", "--distill-corpus", "16"],
         "embeddings+corpus16": ["--distill", "embeddings", "--distill-corpus", "16"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/ablation/sample/guided"))
    parser.add_argument("--student", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loss-repeats", type=int, default=50)
    args = parser.parse_args(argv)

    data = TrainingData(args.work, 1, args.device)
    batches = [b for b in EpochPlan(data.plan_rows, args.batch_size, seed=0, epoch=0) if len(b) == args.batch_size]
    batches = batches[: args.steps + 1]
    steps = {}
    for name, options in RULES.items():
        parsed = train_command.build_parser().parse_args(["--work", str(args.work), "--out", "-", "--student", args.student,
                                                  *options])
        config = train_command.config_from(parsed)
        loss_fn = loss_from(config)
        model = load_model(args.student, device=args.device)
        model.train()
        groups = [{"params": list(model.parameters())}]
        if loss_fn.distill.embeddings:  # as train.run's start does
            loss_fn.fit_embedding_map(model.get_embedding_dimension(), data.guide_dimension)
            loss_fn.to(args.device)
            groups.append({"params": list(loss_fn.parameters()), "lr": config.distill_map_lr})
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
        teacher = (Teacher(args.work, loss_fn.distill, data.manifest, data.rows, 1, config.seed, args.device)
                   if config.distill_corpus else None)
        steps[name] = (model, loss_fn, optimizer, get_constant_schedule(optimizer), teacher)

    def batch_of(rows, name, step):
        """The rows' batch, with the corpus texts the rule's teacher draws for the step (timed where it reads)."""
        batch, teacher = data.get_batch(rows), steps[name][4]
        return batch if teacher is None else teacher.add(batch, rows, (step, 0))

    times = {name: [] for name in RULES}
    names = list(RULES)
    for round_, rows in enumerate(batches):
        for name in names[round_ % len(names):] + names[: round_ % len(names)]:
            model, loss_fn, optimizer, scheduler, teacher = steps[name]
            plain = data.get_batch(rows) if teacher is None else None  # untimed: train.run's get_batch, as before
            if "cuda" in args.device:
                torch.cuda.synchronize()
            started = time.perf_counter()
            batch = plain if plain is not None else batch_of(rows, name, round_)
            train_step(model, loss_fn, batch, optimizer, scheduler, args.device, 1, bf16=False, mini_batch_size=0, sizes=())
            if "cuda" in args.device:
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - started)
    loss_times = {name: [] for name in RULES}
    first = {name: batch_of(batches[0], name, 0) for name in names}
    with torch.no_grad():
        fixed = {name: {c: student_forward(steps["default"][0], b.texts[c], args.device, False, "") for c in b.columns}
                 for name, b in first.items()}
    for repeat in range(args.loss_repeats + 1):
        for name in names[repeat % len(names):] + names[: repeat % len(names)]:
            student = {c: v.clone().requires_grad_() for c, v in fixed[name].items()}
            started = time.perf_counter()
            steps[name][1](first[name].with_student(student))[0].backward()
            if "cuda" in args.device:
                torch.cuda.synchronize()
            if repeat:
                loss_times[name].append(time.perf_counter() - started)
    loss_mean = {name: statistics.median(t) for name, t in loss_times.items()}
    print(table([(name, f"{1000 * t:.2f}", f"{t / loss_mean['default']:.2f}") for name, t in loss_mean.items()],
                ("rule", "loss alone, ms (median)", "this / default")))
    mean = {name: statistics.mean(t) for name, t in times.items()}
    rows_out = [(name, f"{1000 * t:.0f}", f"{t / mean['default']:.3f}") for name, t in mean.items()]
    print(f"\nstudent {args.student}, {args.work}, batch {args.batch_size} (+1 negative each), {len(batches) - 1} timed "
          f"steps, device {args.device}")
    print(table(rows_out, ("rule", "ms/step", "this / default")))
    print("target: <= 1.1 against the default")
    return [figure(f"distillation step ({name}) / default step, {args.device}", mean[name] / mean["default"], "<= 1.1")
            for name in names[1:]]


if __name__ == "__main__":
    main()
