"""Helpers the benchmarks share: real sample texts, and running a command while measuring its wall time and peak RSS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def sample_texts(sample: Path = SAMPLE) -> list[str]:
    """Every distinct text of a sample built by data/build_sample.py (train pairs, extra corpus, eval corpora)."""
    train = pl.read_parquet(sample / "train.parquet")
    parts = [train["query"], train["positive"], pl.read_parquet(sample / "corpus.parquet")["text"]]
    parts += [pl.read_parquet(sample / split / "corpus.parquet")["text"] for split in ("val", "test")]
    return pl.concat(parts).unique(maintain_order=True).to_list()


def measured(argv: list[str]) -> dict:
    """Run a Python module or script in a fresh process; its wall seconds and peak RSS (MiB)."""
    started = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peak_rss.py"), *map(str, argv)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": report["peak_rss_mib"]}


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
