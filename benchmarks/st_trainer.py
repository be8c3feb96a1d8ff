"""Step time of sentence-transformers' own trainer with StoredGuideGISTLoss (gist_mining.st) against the same trainer
with GISTEmbedLoss (live guide) and with MultipleNegativesRankingLoss (no guide).

    flock /tmp/bench.lock python -m benchmarks.st_trainer --work runs/sample --steps 8

One student, one SentenceTransformerTrainer per loss, the same batches for all three (the stock collator's, from
mined_dataset(work, 1, short="drop") under BatchSamplers.NO_DUPLICATES; the other two get them without the label column); a step
is the trainer's training_step (forward, loss, backward) and an optimizer step. Targets on CPU: <= 0.45x the
GISTEmbedLoss step, <= 1.1x the MNRL step. The losses take turns batch by batch, each going first in turn, so that
machine noise falls on all alike; the first round is a warm-up and does not count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from itertools import islice
from pathlib import Path

import torch

from benchmarks.common import figure, table
from gist_mining.models import DEFAULT_GUIDE, DEFAULT_STUDENT, load_model
from gist_mining.st import StoredGuideGISTLoss, mined_dataset

OURS = "StoredGuideGISTLoss (stored guide)"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("runs/sample"))
    parser.add_argument("--student", default=DEFAULT_STUDENT)
    parser.add_argument("--guide", default=DEFAULT_GUIDE, help="GISTEmbedLoss's live guide: the embed stage's")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss, MultipleNegativesRankingLoss

    student = load_model(args.student, device=args.device)
    guide = load_model(args.guide, device=args.device)
    dataset = mined_dataset(args.work, 1, short="drop")
    losses = {OURS: StoredGuideGISTLoss(student, args.work, temperature=0.01),
              "GISTEmbedLoss (live guide)": GISTEmbedLoss(student, guide, temperature=0.01),
              "MultipleNegativesRankingLoss": MultipleNegativesRankingLoss(student, scale=100.0)}
    with tempfile.TemporaryDirectory() as out:
        settings = SentenceTransformerTrainingArguments(
            out, per_device_train_batch_size=args.batch_size, batch_sampler="no_duplicates", report_to="none",
            learning_rate=1e-6, max_steps=args.steps + 1, use_cpu=args.device == "cpu", disable_tqdm=True,
            dataloader_drop_last=True)  # tiny learning rate: the model barely moves between methods
        trainers = {name: SentenceTransformerTrainer(model=student, args=settings, loss=loss,
                                                     train_dataset=dataset if name == OURS else
                                                     dataset.remove_columns("label"))
                    for name, loss in losses.items()}
        for trainer in trainers.values():
            trainer.create_optimizer()
            trainer.current_gradient_accumulation_steps = 1  # set by train(), which this loop stands in for
        batches = list(islice(trainers[OURS].get_train_dataloader(), args.steps + 1))
        times = {name: [] for name in trainers}
        names = list(trainers)
        for round_, batch in enumerate(batches):
            # Who meets a batch's shapes first pays for kernel selection: take turns at going first.
            for name in names[round_ % 3:] + names[: round_ % 3]:
                trainer = trainers[name]
                inputs = {k: v for k, v in batch.items() if name == OURS or k != "label"}
                if "cuda" in args.device:
                    torch.cuda.synchronize()
                started = time.perf_counter()
                trainer.training_step(student, inputs)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
                if "cuda" in args.device:
                    torch.cuda.synchronize()
                if round_:
                    times[name].append(time.perf_counter() - started)
    mean = {name: sum(t) / len(t) for name, t in times.items()}
    rows = [(name, f"{1000 * t:.0f}", f"{mean[OURS] / t:.3f}") for name, t in mean.items()]
    print(f"\nSentenceTransformerTrainer, student {args.student}, guide {args.guide}, batch {args.batch_size} "
          f"(+1 negative each), {len(batches) - 1} timed steps, device {args.device}")
    print(table(rows, ("loss", "ms/step", "stored guide / this")))
    print("targets: <= 0.45 against GISTEmbedLoss, <= 1.1 against MNRL")
    return [figure(f"ST trainer step, stored guide / GISTEmbedLoss (live guide), {args.device}",
                   mean[OURS] / mean["GISTEmbedLoss (live guide)"], "<= 0.45"),
            figure(f"ST trainer step, stored guide / MNRL, {args.device}",
                   mean[OURS] / mean["MultipleNegativesRankingLoss"], "<= 1.1")]


if __name__ == "__main__":
    main()
