"""Every benchmark on real data at a size that takes about 20 minutes on 2 CPU cores; one table of figures.

    python -m benchmarks.run_all [--device cuda] [--out benchmarks/latest.json]

Needs the bundled sample mined in runs/sample, as the main job leaves it (made here when missing). Each script
can also be run alone at other sizes; see its docstring.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from benchmarks import (embed_cache, embed_throughput, index_recall, mask_memory, mining_vs_st, precision_check,
                        rescore_cost, train_step)
from benchmarks.common import ROOT, SAMPLE, table
from gist_mining import workdir
from pipeline import embed, mask


def mined_sample(work: Path) -> Path:
    """The main job's first two stages, as python -m pipeline.run runs them (a finished run is reused)."""
    embed.main(["--input", str(SAMPLE / "train.parquet"), "--work", str(work)])
    if not (work / workdir.MINED_MANIFEST).exists():
        mask.main(["--work", str(work)])
    return work


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    device = ["--device", args.device]
    work = mined_sample(ROOT / "runs" / "sample")
    started = time.perf_counter()
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.parquet"
        pl.read_parquet(SAMPLE / "train.parquet").sample(1000, seed=0).write_parquet(pairs)
        runs = [
            lambda: embed_throughput.main(["--n", "1000", *device]),
            lambda: mining_vs_st.main(["--pairs", str(pairs), "--corpus", str(SAMPLE / "corpus.parquet"), *device]),
            lambda: embed_cache.main(device),
            lambda: precision_check.main(["--n", "300", "--corpus-n", "300", *device]),
            lambda: train_step.main(["--work", str(work), *device, *(["--bf16"] if on_gpu else [])]),
            lambda: index_recall.main(["--sizes", "10000", "30000", "--queries", "500"]),
            lambda: mask_memory.main(["--anchors", "1500", "--growth", "10", "--pool", "20000"]),  # 15k pairs
            lambda: rescore_cost.main(device),
        ]
        for run in runs:
            figures += run()
    rows = [(f["figure"], f"{f['value']:.4g}{f['unit'] if f['unit'] == 'x' else ''}", f["target"]) for f in figures]
    print(f"\nall benchmarks, device {args.device}, {time.perf_counter() - started:.0f} s")
    print(table(rows, ("figure", "value", "target")))
    if args.out:
        args.out.write_text(json.dumps({"device": args.device, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
