"""Step time of train.run against sentence-transformers' GISTEmbedLoss (live guide) and MNRL (no guide).

    python -m benchmarks.train_step --work runs/sample --steps 8

One process, the same batches (query, positive, one mined negative per anchor) and sequence lengths for
all three; each step is forward, backward and an AdamW step of the student. Targets: <= 0.45x the
GISTEmbedLoss step, <= 1.1x the MNRL step. The three methods take turns batch by batch so that machine
noise falls on all of them alike, each going first in turn; the first round is a warm-up and does not count.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.common import figure, table
from gist_mining.loss import GISTLoss
from gist_mining.models import load_model
from gist_mining.training.batches import EpochPlan
from gist_mining.training.data import COLUMN_ROLES, COLUMNS, TrainingData
from gist_mining.training.step import student_forward


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("runs/sample"))
    parser.add_argument("--student", default="all-MiniLM-L6-v2")
    parser.add_argument("--guide", default="all-mpnet-base-v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args(argv)
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MultipleNegativesRankingLoss

    data = TrainingData(args.work, 1, args.device)
    batches = [b for b in EpochPlan(data.plan_rows, args.batch_size, seed=0, epoch=0) if len(b) == args.batch_size]
    batches = batches[: args.steps + 1]
    student = load_model(args.student, device=args.device)
    guide = load_model(args.guide, device=args.device)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)  # tiny: the model barely moves between methods
    loss_fn = GISTLoss(temperature=0.01, margin_strategy="absolute", margin=0.0)
    st_losses = {"GISTEmbedLoss (live guide)": GISTEmbedLoss(student, guide, temperature=0.01),
                 "MultipleNegativesRankingLoss": MultipleNegativesRankingLoss(student, scale=100.0)}

    def ours(rows):  # as train_step does it: one forward pass per column
        batch = data.get_batch(rows)
        return loss_fn(batch.with_student({c: student_forward(student, batch.texts[c], args.device, args.bf16,
                                                          student.prompts[COLUMN_ROLES[c]]) for c in COLUMNS}))[0]

    def theirs(st_loss):
        def step(rows):
            texts = data.get_batch(rows).texts
            features = [{k: v.to(args.device) if hasattr(v, "to") else v for k, v in student.preprocess(texts[c]).items()}
                        for c in COLUMNS]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.bf16 and "cuda" in args.device):
                return st_loss(features, labels=None)
        return step

    methods = {"train.run (precomputed guide)": ours, **{k: theirs(v) for k, v in st_losses.items()}}
    times = {name: [] for name in methods}
    names = list(methods)
    for round_, batch in enumerate(batches):
        # Who meets a batch's shapes first pays for kernel selection: take turns at going first.
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            method = methods[name]
            if "cuda" in args.device:
                torch.cuda.synchronize()
            started = time.perf_counter()
            loss = method(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if "cuda" in args.device:
                torch.cuda.synchronize()
            if round_:
                times[name].append(time.perf_counter() - started)
    mean = {name: sum(t) / len(t) for name, t in times.items()}
    ours_time = mean["train.run (precomputed guide)"]
    rows_out = [(name, f"{1000 * t:.0f}", f"{ours_time / t:.3f}") for name, t in mean.items()]
    print(f"\nstudent {args.student}, guide {args.guide}, batch {args.batch_size} (+1 negative each), "
          f"{len(batches) - 1} timed steps, device {args.device}{', bf16' if args.bf16 else ''}")
    print(table(rows_out, ("method", "ms/step", "train.run / this")))
    print("targets: <= 0.45 against GISTEmbedLoss, <= 1.1 against MNRL")
    precision = "bf16" if args.bf16 else "fp32"
    return [figure(f"train step / GISTEmbedLoss (live guide), {args.device} {precision}",
                   ours_time / mean["GISTEmbedLoss (live guide)"], "<= 0.45"),
            figure(f"train step / MNRL, {args.device} {precision}",
                   ours_time / mean["MultipleNegativesRankingLoss"], "<= 1.1")]


if __name__ == "__main__":
    main()
