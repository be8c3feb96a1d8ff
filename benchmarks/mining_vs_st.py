"""End-to-end mining against sentence-transformers' mine_hard_negatives, and the re-filter speed-up.

    python -m benchmarks.mining_vs_st --pairs data/sample/train.parquet --corpus data/sample/corpus.parquet
    python -m benchmarks.mining_vs_st --whole-sample --model all-MiniLM-L6-v2 --compare-backends   # 13 683 texts

Both sides start from the same pairs file and guide, each in a fresh process, with the same rules
(relative margin 0.05, 3 negatives, top sampling, FAISS search): ours is pipeline.embed then
pipeline.mask; theirs is util.mine_hard_negatives(use_faiss=True). Wall time and peak RSS are per
process (ours: the sum of both stages' times, the larger of their peaks). Then a re-filter with new
rules (pipeline.mask --refilter) is timed against the fresh mining run it replaces. --whole-sample takes
the bundled sample's train pairs with every other sample text as corpus; --compare-backends also mines with
the other embed backend and compares stored vectors and mined tables. The ONNX export is made (once per
model, cached) before anything is timed; the embedding cache starts empty.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from benchmarks.common import SAMPLE, figure, measured, table

ST_SCRIPT = '''
import sys, polars as pl
from datasets import Dataset
from gist_mining.models import load_model
from sentence_transformers.util import mine_hard_negatives
pairs = pl.read_parquet(sys.argv[1]).select("query", "positive")
corpus = pl.read_parquet(sys.argv[2])["text"].to_list() if sys.argv[2] != "-" else None
model = load_model(sys.argv[3], device=None if sys.argv[4] == "-" else sys.argv[4])
mined = mine_hard_negatives(Dataset.from_polars(pairs), model, corpus=corpus, relative_margin=0.05, num_negatives=3,
                            sampling_strategy="top", use_faiss=True, batch_size=int(sys.argv[5]), verbose=False)
print("mined rows", len(mined), file=sys.stderr)
'''
# the rules both sides mine with (mine_hard_negatives' arguments in ST_SCRIPT)
MASK_RULES = ["--margin-strategy", "relative", "--margin", 0.05, "--negatives-per-anchor", 3, "--sampling", "top"]


def whole_sample(out: Path) -> tuple[str, str]:
    """The sample's train pairs, and every other sample text (extra corpus, val and test corpora) as corpus."""
    corpus = pl.concat([pl.read_parquet(SAMPLE / "corpus.parquet")["text"]]
                       + [pl.read_parquet(SAMPLE / split / "corpus.parquet")["text"] for split in ("val", "test")])
    pl.DataFrame({"text": corpus.unique(maintain_order=True)}).write_parquet(out / "corpus.parquet")
    return str(SAMPLE / "train.parquet"), str(out / "corpus.parquet")


def compare(work: Path, other: Path) -> str:
    """Stored vectors and mined tables of two work directories made with different backends."""
    from gist_mining.workdir import load_embeddings

    (ids_a, a), (ids_b, b) = load_embeddings(work), load_embeddings(other)
    largest = float(np.abs(a[np.argsort(ids_a)] - b[np.argsort(ids_b)]).max())
    mined = [pl.read_parquet(w / "mined" / "*.parquet").sort("anchor_id") for w in (work, other)]
    decisions = ["negative_ids", "false_negative_ids", "given_negative_flagged"]
    differ = mined[0].select("anchor_id", *decisions).join(mined[1].select("anchor_id", *decisions), on="anchor_id")
    differ = differ.filter(pl.any_horizontal(pl.col(c) != pl.col(f"{c}_right") for c in decisions))
    return (f"stored embeddings, largest difference between the two runs: {largest:.2e} (target <= 1e-4); "
            f"anchors whose mined negatives or false negatives differ: {differ.height} of {mined[0].height}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="data/sample/train.parquet")
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    parser.add_argument("--whole-sample", action="store_true", help="every sample text (13 683): train pairs + corpora")
    parser.add_argument("--compare-backends", action="store_true", help="also mine with torch; compare (onnx backend)")
    args = parser.parse_args(argv)
    device = ["--device", args.device] if args.device else []
    with tempfile.TemporaryDirectory() as tmp:
        if args.whole_sample:
            args.pairs, args.corpus = whole_sample(Path(tmp))
        work = Path(tmp) / "work"
        corpus = ["--corpus", args.corpus] if args.corpus else []
        # a fresh embedding cache: vectors cached by an earlier run would spare our side the forward pass
        embed_argv = ["-m", "pipeline.embed", "--input", args.pairs, *corpus, "--guide", args.model,
                      "--encode-batch-size", args.batch_size, "--precision", args.precision, *device,
                      "--cache-dir", Path(tmp) / "embedding-cache"]
        if args.backend != "torch":  # the export, once per model, before anything is timed
            measured([*embed_argv, "--work", Path(tmp) / "export", "--backend", args.backend, "--texts-per-shard", 1,
                      "--num-shards", 1_000_000_000, "--shard-index", 999_999_999])
        embed = measured([*embed_argv, "--work", work, "--backend", args.backend])
        refilter_rules = ["--refilter", "--margin-strategy", "absolute", "--margin", 0.1, "--negatives-per-anchor", 5]
        mask = measured(["-m", "pipeline.mask", "--work", work, *MASK_RULES])
        refilter = measured(["-m", "pipeline.mask", "--work", work, *refilter_rules])
        script = Path(tmp) / "st_mine.py"
        script.write_text(ST_SCRIPT)
        theirs = measured([script, args.pairs, args.corpus or "-", args.model, args.device or "-", args.batch_size])
        agreement = None
        if args.compare_backends:
            measured([*embed_argv, "--work", Path(tmp) / "torch", "--backend", "torch"])
            for rules in (MASK_RULES, refilter_rules):  # the same rules as ours, so mined/ holds the re-filtered table
                measured(["-m", "pipeline.mask", "--work", Path(tmp) / "torch", *rules])
            agreement = compare(work, Path(tmp) / "torch")
        n_texts = pl.read_parquet(work / "texts.parquet").height
    ours_seconds = embed["seconds"] + mask["seconds"]
    ours_rss = max(embed["peak_rss_mib"], mask["peak_rss_mib"])
    rows = [
        ("pipeline.embed", f"{embed['seconds']:.1f}", embed["peak_rss_mib"]),
        ("pipeline.mask", f"{mask['seconds']:.1f}", mask["peak_rss_mib"]),
        ("ours, end to end", f"{ours_seconds:.1f}", ours_rss),
        ("ST mine_hard_negatives", f"{theirs['seconds']:.1f}", theirs["peak_rss_mib"]),
        ("pipeline.mask --refilter", f"{refilter['seconds']:.1f}", refilter["peak_rss_mib"]),
    ]
    print(f"\n{args.pairs} (+ {args.corpus or 'no extra corpus'}): {n_texts} distinct texts, guide {args.model}, "
          f"{args.precision}, backend {args.backend}")
    print(table(rows, ("run", "seconds", "peak RSS MiB")))
    print(f"wall time ratio ours / ST: {ours_seconds / theirs['seconds']:.3f}  (target <= 0.5)")
    print(f"peak RSS ratio ours / ST:  {ours_rss / theirs['peak_rss_mib']:.3f}  (target <= 1.0)")
    print(f"re-filter speed-up vs fresh embed+mask: {ours_seconds / refilter['seconds']:.1f}x  (target >= 50x); "
          f"vs mask alone: {mask['seconds'] / refilter['seconds']:.1f}x (process start included in each)")
    if agreement:
        print(agreement)
    return [figure("mining wall time, ours / ST mine_hard_negatives", ours_seconds / theirs["seconds"], "<= 0.5"),
            figure("mining peak RSS, ours / ST mine_hard_negatives", ours_rss / theirs["peak_rss_mib"], "<= 1.0"),
            figure("re-filter speed-up vs fresh embed + mask", ours_seconds / refilter["seconds"], ">= 50", "x")]


if __name__ == "__main__":
    main()
