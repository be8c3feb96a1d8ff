"""Peak memory per process of sentence-transformers' trainer with StoredGuideGISTLoss under FSDP2 (full_shard)
against DDP, on two gloo processes on CPU, at two batch sizes: what sharding saves per parameter, and what an anchor
costs.

    flock /tmp/bench.lock python -m benchmarks.fsdp_memory [--batch-sizes 4 16] [--hidden 384 --layers 6]

A student of all-MiniLM-L6-v2's architecture by default (random weights, its 30522-word vocabulary: 22.7M
parameters), a guide of the same shape (another seed) that embeds --pairs pairs of data/sample's train.parquet (short
texts: queries of 4 words, positives of 10, on average), mined with 2 negatives per anchor. Each cell is three steps of tests/st_fsdp_run.py under
torchrun (AdamW, fp32), its peak RSS (VmHWM) averaged over the two ranks. Reported: per parameter, (DDP - FSDP) /
parameters at the same batch; per anchor, the growth between the batch sizes / the extra anchors per process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl

from benchmarks.common import ROOT, SAMPLE, figure, table


def build_model(folder: Path, hidden: int, layers: int, seed: int) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(seed)
    train = pl.read_parquet(SAMPLE / "train.parquet")
    words = pl.concat([train["query"], train["positive"]]).str.split(" ").explode().unique().sort().to_list()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder / "raw")
    BertModel(BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 32, intermediate_size=4 * hidden)).save_pretrained(folder / "raw")
    transformer = Transformer(str(folder / "raw"), max_seq_length=128)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden), Normalize()], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


def stage(module: str, *args) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, check=True,
                   capture_output=True)


def run(work: Path, student: Path, out: Path, sharding: str, batch: int) -> dict:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", port,
                           str(ROOT / "tests" / "st_fsdp_run.py"), str(work), str(student), str(out), sharding,
                           str(batch)], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-4000:])
    ranks = [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    return {"peak_rss_mib": sum(r["peak_rss_mib"] for r in ranks) / 2, "held": ranks[0]["held"]}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=[4, 16])
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=256)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp())
    pairs = pl.read_parquet(SAMPLE / "train.parquet").head(args.pairs).select("query", "positive")
    pairs.write_parquet(root / "pairs.parquet")
    guide = build_model(root / "guide", args.hidden, args.layers, seed=1)
    student = build_model(root / "student", args.hidden, args.layers, seed=2)
    stage("pipeline.embed", "--input", root / "pairs.parquet", "--work", root / "w", "--guide", guide)
    stage("pipeline.mask", "--work", root / "w", "--k", 30, "--negatives-per-anchor", 2, "--margin", -0.2)
    cells = {(s, b): run(root / "w", student, root / f"{s}-{b}", s, b)
             for b in args.batch_sizes for s in ("ddp", "full_shard")}
    small, big = args.batch_sizes
    parameters = cells["ddp", small]["held"]
    rows = [(s, b, cells[s, b]["held"], round(cells[s, b]["peak_rss_mib"], 1)) for (s, b) in cells]
    print(table(rows, ("sharding", "anchors per process", "parameter values held", "peak RSS per process (MiB)")))
    saved = {b: (cells["ddp", b]["peak_rss_mib"] - cells["full_shard", b]["peak_rss_mib"]) * 2**20 / parameters
             for b in args.batch_sizes}
    per_anchor = {s: (cells[s, big]["peak_rss_mib"] - cells[s, small]["peak_rss_mib"]) * 2**20 / (big - small)
                  for s in ("ddp", "full_shard")}
    print(f"{parameters} parameters; FSDP saves per parameter per process: "
          + ", ".join(f"{v:.1f} bytes at {b} anchors" for b, v in saved.items()))
    print("per anchor per process: " + ", ".join(f"{s} {v / 2**10:.0f} KiB" for s, v in per_anchor.items()))
    return [figure("FSDP2 saving per parameter per process (2 processes)", round(saved[big], 1), unit="bytes"),
            figure("peak RSS per anchor per process (FSDP2)", round(per_anchor["full_shard"] / 2**10), unit="KiB")]


if __name__ == "__main__":
    main()
