"""Write a complete work directory as pipeline.embed would, with synthetic clustered unit vectors as the guide's.

    python -m benchmarks.synthetic_pool --work /tmp/scale-1m --pool 1000000 --anchors 100000 --dim 384

Texts are "doc N" (the pool: N < --pool) and "query N" (N < --anchors). Anchor N asks query N, whose
positive is doc N; every third anchor also gives doc (anchors + N) as a negative. Documents lie around
pool / 1000 random centres (cosine ~0.5 between two documents of a centre), and query N around doc N
(cosine ~0.86). The texts and anchors are planned by gist_mining.planning.plan_texts, the plan made by
gist_mining.embed.plan.plan_for, and the shards, markers and manifest written by gist_mining.embed.step.EmbedStep
with a stand-in guide whose ``encode`` returns these vectors, so the directory is exactly what
pipeline.embed writes (float16 vectors) and `python -m pipeline.mask --work DIR` runs on it unchanged.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from gist_mining import planning, workdir
from gist_mining.embed.plan import claim, plan_for
from gist_mining.embed.settings import EmbedOptions, EmbedSettings
from gist_mining.embed.stage import finish
from gist_mining.embed.step import EmbedStep
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.models import ModelSettings
from gist_mining.storage import config_fingerprint

DOCUMENT_SPREAD, QUERY_SPREAD = 1.0, 0.6  # noise norm relative to the unit centre (document) or positive (query)


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # in place, ~10x np.linalg.norm's speed: pools of 30M texts
    return x


class SyntheticGuide:
    """Stands in for a sentence-transformer: ``encode`` maps "doc N" and "query N" to their vectors."""

    def __init__(self, pool: int, anchors: int, dim: int, seed: int):
        self.pool, self.dim, self.seed = pool, dim, seed
        rng = np.random.default_rng([seed, 0])
        self.centres = unit(rng.standard_normal((max(1, pool // 1000), dim), dtype=np.float32))
        self.positives = self.documents(np.arange(anchors), rng)  # docs 0 .. anchors-1 are the anchors' positives
        noise = rng.standard_normal((anchors, dim), dtype=np.float32) * (QUERY_SPREAD / np.sqrt(dim))
        self.queries = unit(self.positives + noise)

    def documents(self, numbers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((len(numbers), self.dim), dtype=np.float32) * (DOCUMENT_SPREAD / np.sqrt(self.dim))
        return unit(self.centres[rng.integers(0, len(self.centres), len(numbers))] + noise)

    def encode(self, texts: list[str], **_) -> np.ndarray:
        kind = np.array([t.startswith("query") for t in texts])
        numbers = np.array([int(t.rsplit(" ", 1)[1]) for t in texts])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        out[kind] = self.queries[numbers[kind]]
        positive = ~kind & (numbers < len(self.positives))
        out[positive] = self.positives[numbers[positive]]
        other = ~kind & ~positive
        # Drawn per shard (seeded by its first text): the same work directory for the same arguments.
        out[other] = self.documents(numbers[other], np.random.default_rng([self.seed, 1, int(numbers[0])]))
        return out


def pairs_and_corpus(pool: int, anchors: int) -> tuple[pl.DataFrame, list[str]]:
    width = len(str(pool))
    doc = [f"doc {i:0{width}d}" for i in range(pool)]
    negatives = [[doc[anchors + i]] if i % 3 == 0 and anchors + i < pool else [] for i in range(anchors)]
    pairs = pl.DataFrame({"query": [f"query {i:0{width}d}" for i in range(anchors)], "positive": doc[:anchors],
                          "negatives": pl.Series(negatives, dtype=pl.List(pl.String)), "task": "synthetic"})
    return pairs, doc[anchors:]


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--pool", required=True, type=int, help="documents (the candidate pool)")
    parser.add_argument("--anchors", required=True, type=int, help="anchors (at most --pool)")
    parser.add_argument("--dim", required=True, type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--texts-per-shard", type=int, default=EmbedOptions.texts_per_shard,
                        help="texts per embedding shard")
    args = parser.parse_args(argv)
    if not 0 < args.anchors <= args.pool:
        parser.error("--anchors must be in 1 .. --pool")
    started = time.perf_counter()
    pairs, corpus = pairs_and_corpus(args.pool, args.anchors)
    scratch = tempfile.TemporaryDirectory(prefix="gist-mining-plan-")
    planned = planning.plan_texts([("synthetic", [pairs])], [[pl.Series(corpus, dtype=pl.String)]], Path(scratch.name))
    del pairs, corpus
    recipe = {"pool": args.pool, "anchors": args.anchors, "dim": args.dim, "seed": args.seed}
    model_info = {"name": "synthetic", "fingerprint": config_fingerprint(recipe), "dimension": args.dim, **recipe}
    inputs = [{"kind": "synthetic", "path": "benchmarks/synthetic_pool.py", "sha256": config_fingerprint(recipe)}]
    command = shlex.join(["python", "-m", "benchmarks.synthetic_pool", *map(str, sys.argv[1:] if argv is None else argv)])
    plan = plan_for(model_info, EmbedSettings(dtype="float16", precision="fp32", shard_size=args.texts_per_shard,
                                                query_prompt="", document_prompt="", backend="torch"), inputs, command,
                    planned.counts)
    plan = claim(args.work, plan, planned, overwrite=True)
    scratch.cleanup()
    shards = workdir.Shards(args.work, workdir.EMBEDDINGS, len(plan.bounds), plan.fingerprint)
    guide = SyntheticGuide(args.pool, args.anchors, args.dim, args.seed)
    run_step(EmbedStep(shards, plan, ModelSettings("synthetic"), batch_size=0, loaded=guide), ExecutorSettings())
    finish(shards, plan, started)
    return args.work


if __name__ == "__main__":
    main()
