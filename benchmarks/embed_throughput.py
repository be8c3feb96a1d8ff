"""Embed stage throughput against a bare SentenceTransformer.encode over the same texts (target >= 0.95x).

    python benchmarks/embed_throughput.py --model all-mpnet-base-v2 --n 2000

The stage is timed whole (reading and validating input, model load, weight hashing, dedup, writing
shards and manifest); the bare encode only encodes, with the model already loaded. Each side runs
twice, alternating, and the faster of its two runs counts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import SAMPLE, figure, sample_texts, table  # noqa: E402
from gist_mining.models import load_model  # noqa: E402
from pipeline import embed  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="a data/build_sample.py output folder")
    parser.add_argument("--n", type=int, default=2000, help="distinct texts taken from the sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    args = parser.parse_args(argv)
    texts = sample_texts(args.sample)[: args.n]
    half = len(texts) // 2
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.parquet"
        pl.DataFrame({"query": texts[:half], "positive": texts[half : 2 * half]}).write_parquet(pairs)
        model = load_model(args.model, device=args.device)
        if args.precision != "fp32":
            import torch

            model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision])
        texts = texts[: 2 * half]
        model.encode(texts[:256], batch_size=args.batch_size)  # warm-up
        bare, stage = [], []
        for attempt in range(2):
            started = time.perf_counter()
            model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)
            bare.append(time.perf_counter() - started)
            started = time.perf_counter()
            embed.main(["--input", str(pairs), "--work", f"{tmp}/work{attempt}", "--model", args.model,
                        "--batch-size", str(args.batch_size), "--precision", args.precision]
                       + (["--device", args.device] if args.device else []))
            stage.append(time.perf_counter() - started)
    rows = [("bare SentenceTransformer.encode", f"{min(bare):.1f}", f"{len(texts) / min(bare):.1f}"),
            ("pipeline.embed (whole stage)", f"{min(stage):.1f}", f"{len(texts) / min(stage):.1f}")]
    print(f"\n{args.model}, {len(texts)} texts, batch {args.batch_size}, {args.precision}, device {model.device}")
    print(table(rows, ("", "seconds", "texts/s")))
    print(f"throughput ratio (stage / bare): {min(bare) / min(stage):.3f}  (target >= 0.95)")
    return [figure(f"embed stage / bare encode throughput, {args.precision}", min(bare) / min(stage), ">= 0.95")]


if __name__ == "__main__":
    main()
