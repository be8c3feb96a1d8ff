"""Held-out retrieval during and after training (gist_mining.evaluation's evaluator of a split), its headline
figures in the metrics log."""

from __future__ import annotations

from pathlib import Path

from gist_mining.evaluation import headline, read_split, retrieval_evaluator
from gist_mining.training.reporting import Log


def make_evaluator(folder: Path, name: str, prompts: dict | None = None, sizes: tuple[int, ...] = ()):
    """Retrieval on a split (a folder in BEIR's layout or the bundled sets', ``gist_mining.evaluation``);
    ``prompts`` per role ("query", "document"), else the model's own (encode_query's). With ``sizes``, also with
    the embeddings cut to each size (metrics named dim<size>_...)."""
    return retrieval_evaluator(read_split(folder), name, prompts, sizes)


def evaluate(model, evaluator, log: Log, step: int, rank: int) -> dict:
    model.eval()
    scores = headline(evaluator(model)) if rank == 0 else {}
    model.train()
    log.write({"step": step, **{f"eval_{k}": v for k, v in scores.items()}})
    return scores
