"""GradCache against plain steps: peak memory and time per anchor of a big batch made of mini-batches.

    python benchmarks/grad_cache.py --device cuda [--big 4096] [--mini 64] [--steps 3]

A student with all-MiniLM-L6-v2's architecture (6 layers, 384 wide; random weights, which change no
timing or memory) and stored 768-d guide vectors; each anchor has a query, a positive and one negative
of 24-48 words. Reported: a plain step at B = --mini anchors (one forward pass per column) and a
GradCache step at B = --big anchors in forward passes of --mini texts, each as peak memory
(torch.cuda.max_memory_allocated on CUDA; on CPU, the growth of the process's peak RSS) and seconds per
anchor. Targets: memory at --big within 1.2x of the plain step at --mini; time per anchor within 1.3x.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gist_mining.loss import GISTLoss  # noqa: E402
from train import run as train  # noqa: E402

WORDS = ("the a of to and in bank river money loan water fish boat cat dog mat quick brown fox jumps over lazy "
         "function returns value list string number file path open close read write data table model text").split()


def student(device):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast
    import tempfile

    folder = Path(tempfile.mkdtemp())
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536)).save_pretrained(folder)
    transformer = Transformer(str(folder), max_seq_length=128)
    return SentenceTransformer(modules=[transformer, Pooling(384)], device=device)


def make_batch(n: int, device, rng: random.Random) -> train.Batch:
    texts = {c: [" ".join(rng.choice(WORDS) for _ in range(rng.randint(24, 48))) for _ in range(n)]
             for c in train.COLUMNS}
    ids = {c: torch.arange(n, device=device) + 10_000 * i for i, c in enumerate(train.COLUMNS)}
    guide = {c: F.normalize(torch.randn(n, 768, device=device), dim=-1).half() for c in train.COLUMNS}
    return train.Batch(texts, guide, ids, torch.full((n, 1), -1, device=device))


def peak(device) -> float:
    if "cuda" in device:
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(model, batch: train.Batch, mini: int, device, steps: int) -> tuple[float, float]:
    """Peak memory (MiB) above the model's own, and seconds per anchor, over ``steps`` timed steps."""
    loss_fn = GISTLoss(0.05, train.Defaults.margin_strategy, train.Defaults.margin)
    args = SimpleNamespace(mini_batch_size=mini, bf16=False)
    sizes = [len(batch.texts[c]) for c in train.COLUMNS]
    if "cuda" in device:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before, seconds = peak(device), []
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        if mini < sum(sizes):
            train.cached_backward(model, loss_fn, batch, args, device)
        else:
            student = {c: train.embed(model, batch.texts[c], device, False, model.prompts[train.ROLES[c]])
                       for c in train.COLUMNS}
            loss_fn(batch.with_student(student))[0].backward()
        if "cuda" in device:
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=False)
        if step:
            seconds.append(time.perf_counter() - started)
    return peak(device) - before, sum(seconds) / len(seconds) / sizes[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--big", type=int, default=4096)
    parser.add_argument("--mini", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rng = random.Random(0)
    model = student(args.device)
    model.train()
    for p in model.parameters():  # gradient buffers exist before anything is measured
        p.grad = torch.zeros_like(p)
    plain = measure(model, make_batch(args.mini, args.device, rng), 3 * args.mini, args.device, args.steps)
    cached = measure(model, make_batch(args.big, args.device, rng), args.mini, args.device, args.steps)
    print(f"device {args.device}; MiniLM-shaped student; memory above the model and its gradients")
    print("| step | anchors | peak MiB | ms per anchor |\n| --- | --- | --- | --- |")
    print(f"| plain | {args.mini} | {plain[0]:.0f} | {1000 * plain[1]:.2f} |")
    print(f"| GradCache, mini-batches of {args.mini} texts | {args.big} | {cached[0]:.0f} | {1000 * cached[1]:.2f} |")
    print(f"memory ratio {cached[0] / plain[0]:.2f} (target <= 1.2); time per anchor ratio "
          f"{cached[1] / plain[1]:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
