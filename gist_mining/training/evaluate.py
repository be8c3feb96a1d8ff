"""Held-out retrieval during and after training: sentence-transformers' InformationRetrievalEvaluator on a split,
its headline figures in the metrics log."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl

from gist_mining.training.reporting import Log


def make_evaluator(folder: Path, name: str, prompts: dict | None = None, sizes: tuple[int, ...] = ()):
    """Retrieval on a split; ``prompts`` per role ("query", "document"), else the model's own (encode_query's).
    With ``sizes``, also with the embeddings cut to each size (metrics named dim<size>_...)."""
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SequentialEvaluator

    queries = pl.read_parquet(folder / "queries.parquet")
    corpus = pl.read_parquet(folder / "corpus.parquet")
    qrels = pl.read_parquet(folder / "qrels.parquet").group_by("query_id").agg("doc_id")
    evaluators = [InformationRetrievalEvaluator(
        queries=dict(queries.select("query_id", "text").iter_rows()),
        corpus=dict(corpus.select("doc_id", "text").iter_rows()),
        relevant_docs={q: set(d) for q, d in qrels.iter_rows()},
        name=size_name, truncate_dim=size, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10],
        precision_recall_at_k=[10, 100], map_at_k=[100], show_progress_bar=False, batch_size=128,
        **({"query_prompt": prompts["query"], "corpus_prompt": prompts["document"]} if prompts else {}),
    ) for size_name, size in [(name, None)] + [(f"dim{size}", size) for size in sizes]]
    return evaluators[0] if len(evaluators) == 1 else SequentialEvaluator(evaluators)


def evaluate(model, evaluator, log: Log, step: int, rank: int) -> dict:
    model.eval()
    scores = headline(evaluator(model)) if rank == 0 else {}
    model.train()
    log.write({"step": step, **{f"eval_{k}": v for k, v in scores.items()}})
    return scores


def headline(metrics: dict) -> dict:
    """NDCG@10, MRR@10 and recall@100 of the whole embeddings, and as dim<size>_... of each cut size."""
    pick = ("ndcg@10", "mrr@10", "recall@100")
    return {(size.group(0) if size else "") + short: round(v, 4) for short in pick for k, v in metrics.items()
            if k.endswith(f"cosine_{short}") for size in [re.match(r"dim\d+_", k)]}
