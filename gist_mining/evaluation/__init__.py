"""Evaluation as the field does it: retrieval folders (BEIR's layout or the bundled sets'), NanoBEIR and MTEB,
several models side by side in one table (``evaluate``), through sentence-transformers' evaluators and ``mteb``.
``train.run --eval``, ``pipeline.run`` and ``python -m pipeline.evaluate`` all score through this package."""

from gist_mining.evaluation.run import ModelOptions, evaluate
from gist_mining.evaluation.splits import RetrievalSplit, read_split
from gist_mining.evaluation.suites import IR_SETTINGS, METRICS, MTEB, NanoBEIR, RetrievalFolder, headline, retrieval_evaluator

__all__ = ["evaluate", "ModelOptions", "RetrievalSplit", "read_split", "RetrievalFolder", "NanoBEIR", "MTEB",
           "retrieval_evaluator", "headline", "IR_SETTINGS", "METRICS"]
