"""GradCache against plain steps: peak memory and time per anchor of a big batch made of mini-batches.

    python -m benchmarks.grad_cache --device cuda [--big 4096] [--mini 64] [--steps 3] [--loss-rows R]

A student with all-MiniLM-L6-v2's architecture (6 layers, 384 wide; random weights, which change no
timing or memory) and stored 768-d guide vectors; each anchor has a query, a positive and one negative
of 24-48 words. Reported: a plain step at B = --mini anchors (one forward pass per column) and GradCache
steps at B = --big anchors in forward passes of --mini texts, with the loss computed --loss-rows anchors at
a time (default --mini, as train.run does) and, for comparison, all at once; each as peak memory
(torch.cuda.max_memory_allocated on CUDA; on CPU, the growth of the process's peak RSS, VmHWM, reset
before each measurement) and seconds per anchor. Targets: memory at --big within 1.2x of the plain step
at --mini; time per anchor within 1.3x.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gist_mining.loss import GISTLoss
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import COLUMN_ROLES, COLUMNS, Batch
from gist_mining.training.step import cached_backward, student_forward

WORDS = ("the a of to and in bank river money loan water fish boat cat dog mat quick brown fox jumps over lazy "
         "function returns value list string number file path open close read write data table model text").split()


def student(device):
    import tempfile

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(tempfile.mkdtemp())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)).save_pretrained(folder)
    transformer = Transformer(str(folder), max_seq_length=128)
    return SentenceTransformer(modules=[transformer, Pooling(384)], device=device)


def make_batch(n: int, device, rng: random.Random) -> Batch:
    texts = {c: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(24, 48))) for _ in range(n)]
             for c in COLUMNS}
    ids = {c: torch.arange(n, device=device) + 10_000 * i for i, c in enumerate(COLUMNS)}
    guide = {c: F.normalize(torch.randn(n, 768, device=device), dim=-1).half() for c in COLUMNS}
    return Batch(texts, guide, ids, torch.full((n, 1), -1, device=device), None)


def peak(device) -> float:
    """Peak memory (MiB) since the last reset_peak."""
    if "cuda" in device:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def reset_peak(device) -> float:
    """Start a new peak at the memory in use now; that memory. On CPU, the heap's freed pages go back to the
    system first (else a step reuses what an earlier one freed and shows no growth), then Linux's clear_refs
    resets VmHWM to VmRSS."""
    if "cuda" in device:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    return peak(device)


def default_loss() -> GISTLoss:
    return GISTLoss(TrainConfig.temperature, TrainConfig.in_batch_margin_strategy,
                    TrainConfig.in_batch_margin)


def measure(model, batch: Batch, mini: int, device, steps: int, rows: int | None = None) -> tuple[float, float]:
    """Peak memory (MiB) above the model's own, and seconds per anchor, over ``steps`` timed steps."""
    loss_fn = default_loss()
    sizes = [len(batch.texts[c]) for c in COLUMNS]
    before, seconds = reset_peak(device), []
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        if mini < sum(sizes):
            cached_backward(model, loss_fn, batch, device, mini, rows=rows)
        else:
            student = {c: student_forward(model, batch.texts[c], device, False, model.prompts[COLUMN_ROLES[c]])
                       for c in COLUMNS}
            loss_fn(batch.with_student(student))[0].backward()
        if "cuda" in device:
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=False)
        if step:
            seconds.append(time.perf_counter() - started)
    return peak(device) - before, sum(seconds) / len(seconds) / sizes[0]


def measure_loss(n: int, rows: int, device) -> tuple[float, float]:
    """The loss phase alone (cached embeddings in, their gradients out) at n anchors, ``rows`` at a time: peak
    memory (MiB) above its inputs, and seconds per anchor; for batches whose full GradCache step is too slow
    to time here (on CPU)."""
    batch = make_batch(n, device, random.Random(1))
    student = {c: torch.randn(n, 384, device=device, requires_grad=True) for c in COLUMNS}
    before = reset_peak(device)
    started = time.perf_counter()
    default_loss().backward_by_rows(batch.with_student(student), rows)
    if "cuda" in device:
        torch.cuda.synchronize()
    return peak(device) - before, (time.perf_counter() - started) / n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--big", type=int, default=4096)
    parser.add_argument("--mini", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--loss-rows", type=int, default=None, help="anchors per loss chunk (default: --mini)")
    parser.add_argument("--loss-anchors", type=int, default=4096, help="anchors of the loss phase measured alone")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rng = random.Random(0)
    model = student(args.device)
    model.train()
    for p in model.parameters():  # gradient buffers exist before anything is measured
        p.grad = torch.zeros_like(p)
    plain = measure(model, make_batch(args.mini, args.device, rng), 3 * args.mini, args.device, args.steps)
    big = make_batch(args.big, args.device, rng)
    rows = args.loss_rows or args.mini
    runs = {f"loss by {rows} anchors": measure(model, big, args.mini, args.device, args.steps, rows),
            "loss all at once": measure(model, big, args.mini, args.device, args.steps, args.big)}
    print(f"device {args.device}; MiniLM-shaped student; memory above the model and its gradients")
    print("| step | anchors | peak MiB | ms per anchor | memory ratio | time ratio |\n| --- | --- | --- | --- | --- | --- |")
    print(f"| plain | {args.mini} | {plain[0]:.0f} | {1000 * plain[1]:.2f} | 1 | 1 |")
    for name, (memory, seconds) in runs.items():
        print(f"| GradCache, passes of {args.mini} texts, {name} | {args.big} | {memory:.0f} | {1000 * seconds:.2f} "
              f"| {memory / plain[0]:.2f} | {seconds / plain[1]:.2f} |")
    print("targets: memory ratio <= 1.2, time per anchor ratio <= 1.3")
    print(f"\nthe loss phase alone at {args.loss_anchors} anchors (inputs and their gradients, no forward pass)")
    print("| loss | peak MiB | ms per anchor | memory / plain step | time / plain step |\n| --- | --- | --- | --- | --- |")
    for name, chunk in ((f"by {rows} anchors", rows), ("all at once", args.loss_anchors)):
        memory, seconds = measure_loss(args.loss_anchors, chunk, args.device)
        print(f"| {name} | {memory:.0f} | {1000 * seconds:.2f} | {memory / plain[0]:.2f} | {seconds / plain[1]:.3f} |")


if __name__ == "__main__":
    main()
