"""End-to-end mining against sentence-transformers' mine_hard_negatives, and the re-filter speed-up.

    python benchmarks/mining_vs_st.py --pairs data/sample/train.parquet --corpus data/sample/corpus.parquet

Both sides start from the same pairs file and guide, each in a fresh process, with the same rules
(relative margin 0.05, 3 negatives, top sampling, FAISS search): ours is pipeline.embed then
pipeline.mask; theirs is util.mine_hard_negatives(use_faiss=True). Wall time and peak RSS are per
process (ours: the sum of both stages' times, the larger of their peaks). Then a re-filter with new
rules (pipeline.mask --refilter) is timed against the fresh mining run it replaces.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import figure, measured, table  # noqa: E402

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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", default="data/sample/train.parquet")
    parser.add_argument("--corpus", default=None)
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args(argv)
    device = ["--device", args.device] if args.device else []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        corpus = ["--corpus", args.corpus] if args.corpus else []
        embed = measured(["-m", "pipeline.embed", "--input", args.pairs, *corpus, "--work", work, "--model",
                          args.model, "--batch-size", args.batch_size, "--precision", args.precision, *device])
        mask = measured(["-m", "pipeline.mask", "--work", work, "--margin-strategy", "relative", "--margin", 0.05,
                         "--num-negatives", 3, "--sampling", "top"])
        refilter = measured(["-m", "pipeline.mask", "--work", work, "--refilter", "--margin-strategy", "absolute",
                             "--margin", 0.1, "--num-negatives", 5])
        script = Path(tmp) / "st_mine.py"
        script.write_text(ST_SCRIPT)
        theirs = measured([script, args.pairs, args.corpus or "-", args.model, args.device or "-", args.batch_size])
    ours_seconds = embed["seconds"] + mask["seconds"]
    ours_rss = max(embed["peak_rss_mib"], mask["peak_rss_mib"])
    rows = [
        ("pipeline.embed", f"{embed['seconds']:.1f}", embed["peak_rss_mib"]),
        ("pipeline.mask", f"{mask['seconds']:.1f}", mask["peak_rss_mib"]),
        ("ours, end to end", f"{ours_seconds:.1f}", ours_rss),
        ("ST mine_hard_negatives", f"{theirs['seconds']:.1f}", theirs["peak_rss_mib"]),
        ("pipeline.mask --refilter", f"{refilter['seconds']:.1f}", refilter["peak_rss_mib"]),
    ]
    print(f"\n{args.pairs} (+ {args.corpus or 'no extra corpus'}), guide {args.model}, {args.precision}")
    print(table(rows, ("run", "seconds", "peak RSS MiB")))
    print(f"wall time ratio ours / ST: {ours_seconds / theirs['seconds']:.3f}  (target <= 0.5)")
    print(f"peak RSS ratio ours / ST:  {ours_rss / theirs['peak_rss_mib']:.3f}  (target <= 1.0)")
    print(f"re-filter speed-up vs fresh embed+mask: {ours_seconds / refilter['seconds']:.1f}x  (target >= 50x); "
          f"vs mask alone: {mask['seconds'] / refilter['seconds']:.1f}x (process start included in each)")
    return [figure("mining wall time, ours / ST mine_hard_negatives", ours_seconds / theirs["seconds"], "<= 0.5"),
            figure("mining peak RSS, ours / ST mine_hard_negatives", ours_rss / theirs["peak_rss_mib"], "<= 1.0"),
            figure("re-filter speed-up vs fresh embed + mask", ours_seconds / refilter["seconds"], ">= 50", "x")]


if __name__ == "__main__":
    main()
