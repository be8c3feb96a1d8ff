"""The positive-aware false-negative rule, shared by mining's selection (numpy, gist_mining.mining) and the trainer's
in-batch filter (torch, gist_mining.loss); here, without FAISS, so that the loss imports no search code.
"""

from __future__ import annotations

# For an anchor whose guide score with its own positive is p, a candidate scoring
# s is a false negative when
#
#     absolute:  s > p - M
#     relative:  s > p - |p| * M      (|p| keeps the threshold below p when p is negative)
#     none:      never
#
# GISTEmbed (Solatorio 2024, arXiv 2402.16829) uses absolute with M = 0; NV-Retriever's TopK-PercPos is
# relative (M = 0.05 keeps negatives below 95% of the positive score).

STRATEGIES = ("absolute", "relative", "none")


def false_negative_threshold(positive_score, strategy: str, margin: float):
    """Scores strictly above this are false negatives; works on floats, numpy arrays and torch tensors."""
    if strategy == "absolute":
        return positive_score - margin
    if strategy == "relative":
        return positive_score - abs(positive_score) * margin
    if strategy == "none":
        return positive_score * 0 + float("inf")
    raise ValueError(f"unknown margin strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def is_false_negative(scores, positive_score, strategy: str, margin: float):
    """Elementwise: is each candidate's guide score above its anchor's threshold (broadcasts)."""
    return scores > false_negative_threshold(positive_score, strategy, margin)


def is_unjudged(above_positive, n_candidates):
    """An anchor the guide cannot judge: it scores the labelled positive below most of the candidates, so a
    margin rule calls nearly all of them false negatives (the guide disagrees with the label, or the
    positive is phrased unlike anything it matches). Polars expressions or numpy arrays."""
    return above_positive * 2 > n_candidates
