"""Embed stage throughput against the bare forward pass of the same backend over the same texts (target >= 0.95x).

    python -m benchmarks.embed_throughput --model all-mpnet-base-v2 --n 2000 [--backend onnx|torch] [--profile]

The stage is timed whole (reading and validating input, model load, weight hashing, dedup, the ONNX
session, writing shards and manifest); the bare pass only encodes, with the model (and for onnx the
session, over the cached export) already loaded: SentenceTransformer.encode for torch, the ONNX encoder's
own loop for onnx. Each side runs --repeats times, alternating, and its fastest run counts (this machine's
speed moves by a few percent between minutes). With
--profile, one more stage run under cProfile prints where its time goes. Every stage run starts from an empty
embedding cache.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import polars as pl

from benchmarks.common import SAMPLE, figure, sample_texts, table
from gist_mining import onnx_backend
from gist_mining.models import load_model, resolve_model
from pipeline import embed

# The stage's parts, by the functions that do them (cumulative time; the forward pass includes tokenization).
PARTS = {
    "forward pass (ONNX Runtime or torch, with tokenization)": ["onnx_backend.py:*(encode)", "embed.py:*(encode)"],
    "reading and validating input": ["planning.py:*(read_inputs)"],
    "dedup and text ids": ["planning.py:*(plan_texts)"],
    "model load": ["embed.py:*(prepare_model)"],
    "ONNX export lookup (the session builds on its own thread)": ["onnx_backend.py:*(load)"],
    "model fingerprint (hashing)": ["models.py:*(model_fingerprint)"],
    "writing texts, anchors, plan": ["embed.py:*(claim)"],
    "writing embedding shards": ["storage.py:*(write_parquet_atomic)"],
    "manifest (hashing shards, writing)": ["workdir.py:*(finish)"],
}


def profile(stage_argv: list[str]) -> list[tuple]:
    """The stage's parts as shares of its time, from one run under cProfile."""
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.runcall(embed.main, stage_argv)
    total = time.perf_counter() - started
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}

    def seconds(pattern: str) -> float:
        file, name = pattern.split(":*")
        return max((v[3] for (f, _, n), v in stats.items() if f.endswith("/" + file) and f"({n})" == name), default=0.0)

    rows = [(part, f"{max(map(seconds, patterns)):.2f}", f"{100 * max(map(seconds, patterns)) / total:.1f}%")
            for part, patterns in PARTS.items()]
    return rows + [("whole stage", f"{total:.2f}", "100%")]


def matmul_gflop(model, texts: list[str]) -> float:
    """The forward pass's matrix products over texts, in GFLOP: 2 x the weights of every Linear layer x the texts'
    tokens (padding and attention scores left out, so the rate they give is a floor)."""
    import torch

    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    tokens = sum(map(len, model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)["input_ids"]))
    return 2 * weights * tokens / 1e9


def sgemm_gflops() -> float:
    """GFLOP/s of a plain float32 product of the feed-forward shape of a base model (2048 tokens x 768 by 768 x
    3072) on torch's threads, best of 20: about what these cores can do for the forward pass's products."""
    import torch

    a, b = torch.randn(2048, 768), torch.randn(768, 3072)
    best = float("inf")
    for _ in range(20):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * 2048 * 768 * 3072 / best / 1e9


def bare_encoder(args):
    """The backend's own encode over texts, with everything it needs loaded: (callable, device, model)."""
    model = load_model(args.model, device=args.device)
    if args.precision != "fp32":
        import torch

        model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision])
    if args.backend == "onnx":
        encoder = onnx_backend.load(model, resolve_model(args.model))
        return lambda texts: onnx_backend.encode(encoder, texts, args.batch_size, None), "cpu (ONNX Runtime)", model
    return lambda texts: model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True,
                                      show_progress_bar=False), model.device, model


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="a data/build_sample.py output folder")
    parser.add_argument("--n", type=int, default=2000, help="distinct texts taken from the sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--backend", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--repeats", type=int, choices=range(1, 11), default=3, metavar="1..10",
                        help="runs of each side, alternating; the fastest counts")
    parser.add_argument("--profile", action="store_true", help="also profile one stage run (cProfile)")
    args = parser.parse_args(argv)
    texts = sample_texts(args.sample)[: args.n]
    half = len(texts) // 2
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.parquet"
        pl.DataFrame({"query": texts[:half], "positive": texts[half : 2 * half]}).write_parquet(pairs)
        texts = texts[: 2 * half]
        encode, device, model = bare_encoder(args)
        encode(texts[:256])  # warm-up
        gflop = matmul_gflop(model, texts)
        # each stage run starts from an empty embedding cache of its own (a warm one would skip the forward pass)
        stage_argv = lambda work: ["--input", str(pairs), "--work", str(work), "--cache-dir", f"{work}-cache",  # noqa: E731
                                   "--guide", args.model,
                                   "--encode-batch-size", str(args.batch_size), "--precision", args.precision,
                                   "--backend", args.backend] + (["--device", args.device] if args.device else [])
        bare, stage = [], []
        for attempt in range(args.repeats):
            started = time.perf_counter()
            encode(texts)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            embed.main(stage_argv(f"{tmp}/work{attempt}"))
            stage.append(time.perf_counter() - started)
        parts = profile(stage_argv(f"{tmp}/profiled")) if args.profile else []
        peak = sgemm_gflops()
    rows = [(f"bare forward pass ({args.backend})", f"{min(bare):.1f}", f"{len(texts) / min(bare):.1f}"),
            (f"pipeline.embed --backend {args.backend} (whole stage)", f"{min(stage):.1f}", f"{len(texts) / min(stage):.1f}")]
    print(f"\n{args.model}, {len(texts)} texts, batch {args.batch_size}, {args.precision}, device {device}")
    print(table(rows, ("", "seconds", "texts/s")))
    if parts:
        print(table(parts, ("stage part (cProfile, cumulative)", "seconds", "share")))
    print(f"throughput ratio (stage / bare, {args.backend}): {min(bare) / min(stage):.3f}  (target >= 0.95)")
    print(f"matrix products: the bare forward pass does {gflop:.0f} GFLOP of them, {gflop / min(bare):.0f} GFLOP/s; "
          f"a plain float32 product (2048x768 by 768x3072) on the same threads: {peak:.0f} GFLOP/s")
    return [figure(f"embed stage / bare {args.backend} forward throughput, {args.precision}", min(bare) / min(stage),
                   ">= 0.95")]


if __name__ == "__main__":
    main()
