"""Helpers the benchmarks share: real sample texts, and running a command while measuring its wall time and peak RSS."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"


def sample_texts(sample: Path = SAMPLE) -> list[str]:
    """Every distinct text of a sample built by data/build_sample.py (train pairs, extra corpus, eval corpora)."""
    train = pl.read_parquet(sample / "train.parquet")
    parts = [train["query"], train["positive"], pl.read_parquet(sample / "corpus.parquet")["text"]]
    parts += [pl.read_parquet(sample / split / "corpus.parquet")["text"] for split in ("val", "test")]
    return pl.concat(parts).unique(maintain_order=True).to_list()


def script(path: Path) -> ModuleType:
    """A script of this repository outside its packages (data/, tests/), loaded from its file: its folder is not
    put on sys.path, where its other files would shadow installed modules."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measured(argv: list[str], root: Path = ROOT) -> dict:
    """Run a Python module (``-m NAME``) or script in a fresh process; its wall seconds, peak RSS and peak anonymous
    RSS (MiB; benchmarks/peak_rss.py) and standard output. The packages of ``root`` (this checkout, or another one
    to compare against), ``benchmarks`` among them, come first on the child's path."""
    started = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.peak_rss", *map(str, argv)], cwd=root,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"seconds": time.perf_counter() - started, "peak_rss_mib": report["peak_rss_mib"],
            "peak_anonymous_mib": report.get("peak_anonymous_mib"), "stdout": proc.stdout}  # None: an older checkout


def table(rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def figure(name: str, value: float, target: str = "", unit: str = "") -> dict:
    """One line of the benchmarks' summary table (benchmarks.run_all)."""
    return {"figure": name, "value": value, "unit": unit, "target": target}


def wordnet_pairs(out: Path, n_pairs: int, n_corpus: int, seed: int = 0) -> tuple[Path, Path]:
    """Pairs (a usage example or a synset's lemmas -> its gloss) and a corpus of glosses, from WordNet.

    For sizes beyond the bundled sample. Every pair's positive is one of the corpus glosses, so taking
    more pairs grows the anchors and leaves the candidate pool as it is.
    """
    import random

    synsets = script(ROOT / "data" / "build_sample.py").read_synsets()
    random.Random(seed).shuffle(synsets)
    synsets = synsets[:n_corpus]
    pairs = [(example, s["gloss"]) for s in synsets for example in s["examples"][:1]]
    pairs += [(", ".join(s["lemmas"]), s["gloss"]) for s in synsets]
    random.Random(seed).shuffle(pairs)
    if len(pairs) < n_pairs:
        raise SystemExit(f"WordNet gives {len(pairs)} pairs over {n_corpus} glosses, fewer than {n_pairs}")
    out.mkdir(parents=True, exist_ok=True)
    pairs_path, corpus_path = out / f"pairs-{n_pairs}.parquet", out / f"glosses-{n_corpus}.parquet"
    pl.DataFrame(pairs[:n_pairs], schema=["query", "positive"], orient="row").write_parquet(pairs_path)
    pl.DataFrame({"text": [s["gloss"] for s in synsets]}).unique(maintain_order=True).write_parquet(corpus_path)
    return pairs_path, corpus_path
