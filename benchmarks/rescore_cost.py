"""What cross-encoder rescoring adds to the mask stage on the bundled sample.

    python -m benchmarks.rescore_cost [--k 10] [--guide all-MiniLM-L6-v2] [--rescore-model DIR] [--device cpu]

The sample's train pairs are embedded once under runs/ (all-MiniLM-L6-v2 by default: what rescoring costs
does not depend on which guide chose the candidates). Then pipeline.mask runs in fresh processes, without
and with --rescore-model, and each run's timing is read from mined_summary.json. No cross-encoder weights
exist offline here: without --rescore-model the cross-encoder is cross-encoder/ms-marco-MiniLM-L6-v2's
architecture (BERT, 6 layers, 384 wide, the bundled MiniLM's uncased vocabulary) with random weights, which
costs what the trained model costs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

from benchmarks.common import ROOT, SAMPLE, figure, measured, table
from gist_mining import workdir
from gist_mining.models import resolve_model
from pipeline import embed


def random_minilm_cross_encoder(out: Path) -> Path:
    """ms-marco-MiniLM-L6-v2's shape with random weights (one label), built once."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if (out / "ce" / "config.json").exists():
        return out / "ce"
    torch.manual_seed(0)
    minilm = resolve_model("all-MiniLM-L6-v2")
    BertForSequenceClassification(BertConfig.from_pretrained(minilm, num_labels=1)).save_pretrained(out / "raw")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(out / "raw")
    CrossEncoder(str(out / "raw"), device="cpu").save(str(out / "ce"))
    return out / "ce"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--guide", default="all-MiniLM-L6-v2")
    parser.add_argument("--rescore-model", default=None)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    work = ROOT / "runs" / f"bench-rescore-{args.guide}"
    embed.main(["--input", str(SAMPLE / "train.parquet"), "--work", str(work), "--guide", args.guide])
    model = args.rescore_model or random_minilm_cross_encoder(ROOT / "runs" / "bench-rescore-ce")
    runs = {}
    for name, extra in (("guide only", []), ("rescored", ["--rescore-model", model, "--rescore-device", args.device])):
        workdir.remove_steps(work, "search")  # a fresh mask run each time, not a resumed one
        runs[name] = measured(["-m", "pipeline.mask", "--work", work, "--k", args.k, *extra])
        runs[name].update(json.loads((work / workdir.SUMMARY).read_text())["timing"])
    pairs = pl.scan_parquet(work / workdir.CANDIDATES / "*.parquet").select(
        (1 + pl.col("candidate_ids").list.len() + pl.col("given_negative_ids").list.len()).sum()).collect().item()
    rescored, plain = runs["rescored"], runs["guide only"]
    rows = [(name, f"{r['seconds']:.1f}", f"{r['total_seconds']:.1f}", f"{r.get('rescore_seconds', 0):.1f}",
             r["peak_rss_mib"]) for name, r in runs.items()]
    print(f"\npipeline.mask on the bundled sample ({args.guide} vectors), k = {args.k}, {pairs:,} (query, text) pairs, "
          f"cross-encoder {model} on {args.device}")
    print(table(rows, ("run", "process s", "stage s", "rescore s", "peak RSS MiB")))
    per_second = pairs / rescored["rescore_seconds"]
    print(f"rescoring: {per_second:,.0f} pairs/s; stage time x{rescored['total_seconds'] / plain['total_seconds']:.1f}")
    return [figure("rescore pairs per second (sample, MiniLM-L6-shaped cross-encoder)", round(per_second), unit="pairs/s")]


if __name__ == "__main__":
    main()
