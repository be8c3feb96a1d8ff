"""A faster forward pass for the guide (bf16 or fp16) against fp32: score differences and changed mask decisions.

    python -m benchmarks.precision_check --n 300 --precision bf16 [--device cuda]

The same sample pairs and corpus texts are embedded twice by pipeline.embed, in fp32 and in the faster
precision (text ids are content hashes, so the two work directories line up). The fp32 directory is
mined (relative margin 0.05, k = 100); then every anchor's positive and candidates are scored with both
sets of vectors, and the shared rule (gist_mining.margin.is_false_negative) decides false negative or not under each.
Printed: wall time of each embed run, the largest and mean score difference, and the decisions that
change. bf16 is only faster on hardware with bf16 matrix units (GPUs; CPUs with AMX: the development machine
has AVX512-BF16 without AMX, and is slower in bf16).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import SAMPLE, figure, measured, table
from gist_mining import workdir
from gist_mining.margin import is_false_negative
from gist_mining.workdir import VectorStore
from pipeline import mask

MARGIN_STRATEGY, MARGIN = "relative", 0.05


def scores(store: VectorStore, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", store.get(left), store.get(right))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--n", type=int, default=300, help="pairs drawn from the sample's train split")
    parser.add_argument("--corpus-n", type=int, default=300, help="extra corpus texts from the sample")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    device = ["--device", args.device] if args.device else []
    with tempfile.TemporaryDirectory() as tmp:
        pairs, corpus = Path(tmp) / "pairs.parquet", Path(tmp) / "corpus.parquet"
        pl.read_parquet(SAMPLE / "train.parquet").sample(args.n, seed=0).write_parquet(pairs)
        pl.read_parquet(SAMPLE / "corpus.parquet").head(args.corpus_n).write_parquet(corpus)
        works, seconds = {}, {}
        for precision in ("fp32", args.precision):
            works[precision] = Path(tmp) / precision
            seconds[precision] = measured(["-m", "pipeline.embed", "--input", pairs, "--corpus", corpus, "--work",
                                           works[precision], "--guide", args.model, "--precision", precision,
                                           *device])["seconds"]
        mask.main(["--work", str(works["fp32"]), "--margin-strategy", MARGIN_STRATEGY, "--margin", str(MARGIN)])
        pairs = (pl.read_parquet(workdir.verified(works["fp32"], workdir.checked_candidates_manifest(works["fp32"]), "search"))
                 .select("anchor_id", "query_id", "positive_id", "candidate_ids").explode("candidate_ids"))
        anchors = pairs.unique("anchor_id")
        results = {}
        for precision, work in works.items():
            store = VectorStore(work)
            positive = dict(zip(anchors["anchor_id"], scores(store, anchors["query_id"].to_numpy(),
                                                             anchors["positive_id"].to_numpy())))
            candidate = scores(store, pairs["query_id"].to_numpy(), pairs["candidate_ids"].to_numpy())
            positive_of_pair = np.array([positive[a] for a in pairs["anchor_id"]], dtype=np.float32)
            results[precision] = (np.array(list(positive.values())), candidate,
                                  is_false_negative(candidate, positive_of_pair, MARGIN_STRATEGY, MARGIN))
    (p32, c32, d32), (pfast, cfast, dfast) = results["fp32"], results[args.precision]
    diff = np.abs(np.concatenate([p32 - pfast, c32 - cfast]))
    changed = int((d32 != dfast).sum())
    rows = [("embed seconds, fp32", f"{seconds['fp32']:.1f}"),
            (f"embed seconds, {args.precision}", f"{seconds[args.precision]:.1f}"),
            ("scored pairs (positives + candidates)", len(diff)),
            ("largest |score difference|", f"{diff.max():.5f}"),
            ("mean |score difference|", f"{diff.mean():.6f}"),
            ("mask decisions", len(d32)),
            ("mask decisions changed", f"{changed} ({changed / len(d32):.3%})")]
    print(f"\n{args.model}, {args.precision} against fp32, {len(anchors)} anchors, {MARGIN_STRATEGY} margin {MARGIN}")
    print(table(rows, ("", "")))
    return [figure(f"{args.precision} / fp32 embed time", seconds[args.precision] / seconds["fp32"]),
            figure(f"{args.precision} largest score difference", float(diff.max())),
            figure(f"{args.precision} mask decisions changed", changed / len(d32), unit="share")]


if __name__ == "__main__":
    main()
