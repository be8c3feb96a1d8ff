"""How many anchors' mined decisions move when the stored vectors move by as much as the two embed backends differ.

    python -m benchmarks.mining_stability --noise 1e-7 --seeds 3     # the whole sample, as mining_vs_st --whole-sample

``mining_vs_st.py --compare-backends`` finds the ONNX and torch vectors within 1e-6 of each other and yet a
few anchors mined differently. This mines the whole sample once as the stage stores it, then again with
every vector moved by Gaussian noise of standard deviation ``--noise`` per component (then L2-normalised:
backend-sized noise, no backend change), with the same rules, and counts the anchors whose negatives or
false negatives differ. The vectors come through the embedding cache (a warm cache makes this take seconds;
a cold one runs the guide once); the noise is added as the stage reads them, and never stored in the cache.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.mining_vs_st import MASK_RULES, compare, whole_sample
from gist_mining.embed_cache import EmbeddingCache
from pipeline import embed, mask


def mine(work: Path, pairs: str, corpus: str, model: str) -> None:
    embed.main(["--input", pairs, "--corpus", corpus, "--work", str(work), "--guide", model])
    mask.main(["--work", str(work), *map(str, MASK_RULES)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="all-mpnet-base-v2")
    parser.add_argument("--noise", type=float, default=1e-7, help="standard deviation per vector component")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    real = EmbeddingCache.vectors
    with tempfile.TemporaryDirectory() as tmp:
        pairs, corpus = whole_sample(Path(tmp))
        mine(Path(tmp) / "stored", pairs, corpus, args.model)
        lines = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)

            def moved(self, *a, **k):
                vectors = real(self, *a, **k)
                vectors = vectors + rng.normal(scale=args.noise, size=vectors.shape).astype(np.float32)
                return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

            EmbeddingCache.vectors = moved
            try:
                mine(Path(tmp) / f"noise{seed}", pairs, corpus, args.model)
            finally:
                EmbeddingCache.vectors = real
            lines.append(f"seed {seed}: {compare(Path(tmp) / 'stored', Path(tmp) / f'noise{seed}')}")
    print(f"\nthe whole sample, guide {args.model}, vectors moved by Gaussian noise of std {args.noise:.0e} per component:")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
