"""Cross-encoder rescoring: a sentence-transformers ``CrossEncoder`` scores each anchor's (query, candidate),
(query, positive) and (query, given negative) pairs, and the scores are stored beside the guide's in
``candidates/`` (``RESCORE_SCHEMA``), so the rules can read either (``MiningRules.score``) and
``pipeline.mask --refilter`` switches between them without scoring again.

Scale. ``CrossEncoder.predict`` applies the model's own activation: Sigmoid by default for a one-label model
(sentence-transformers 6, ``CrossEncoder.get_default_activation_fn``), but a model may save another one (the
ms-marco cross-encoders save Identity, so ``predict`` returns raw logits). Here every score is
sigmoid(logit), whatever the model saved: a probability in (0, 1) for every rescore model, so the margin
rules and --min-score/--max-score read the same way whichever model scored (relative 0.05: a candidate is a
false negative above 95% of the positive's probability; absolute 0.05: above the positive's probability
minus 0.05), and the order is the model's own (sigmoid is monotonic). A logit above about 17 rounds to 1.0
in float32, so the most confident pairs tie at the top.

The model's fingerprint (``models.cross_encoder_fingerprint``) is part of the search plan: candidates scored
by another model, or not scored, are stale for a run with this one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.mining import RESCORE_SCHEMA, MiningRules
from gist_mining.models import ModelSettings, cross_encoder_fingerprint, load_cross_encoder, resolve_model
from gist_mining.settings import add_options, option

TEXT_BATCH = 65_536  # rows of texts.parquet read at a time while looking up a chunk's texts


@dataclass(frozen=True)
class RescoreSettings:
    """The cross-encoder that rescores the candidates (none: the rules read the guide's scores only)."""

    model: str | None = option(None, "a CrossEncoder (local directory or Hugging Face id) that scores every (query, "
                                     "candidate), (query, positive) and (query, given negative) pair",
                               flag="--rescore-model")
    batch_size: int = option(32, "pairs per forward pass (sentence-transformers' own default)",
                             flag="--rescore-batch-size")
    device: str | None = option(None, "cpu, cuda, ... (default: best available)", flag="--rescore-device")
    # Shared with the guide's options where a command has both: --revision and --trust-remote-code.
    revision: str | None = None
    trust_remote_code: bool = False


def add_arguments(parser) -> None:
    group = parser.add_argument_group("cross-encoder rescoring (--revision and --trust-remote-code apply to its model)")
    add_options(group, RescoreSettings)
    add_options(group, ModelSettings, exclude=("device", "max_seq_length"))


def refilter_clash(settings: RescoreSettings | None, stored: workdir.SearchPlan) -> list[str]:
    """--refilter never scores: a --rescore-model must be the one the stored candidates were scored with."""
    scored_by = (stored.rescore or {}).get("name")
    if settings is None or settings.model is None or settings.model == scored_by:
        return []
    return [f"--rescore-model {settings.model} (candidates/ have {scored_by or 'no rescores'})"]


def require_scores(rules: MiningRules, search: workdir.SearchPlan, work: Path) -> None:
    if rules.score == "rescore" and not search.rescore:
        raise UsageError(f"--score rescore: {work / workdir.CANDIDATES} hold no cross-encoder scores; search with "
                         "--rescore-model NAME (and --overwrite to replace candidates searched without it)")


def texts_of(path: Path, ids: np.ndarray) -> dict[int, str]:
    """The texts of ``ids``, read from texts.parquet batch by batch: memory holds these texts, not the file."""
    found = {}
    for batch in pq.ParquetFile(path).iter_batches(batch_size=TEXT_BATCH, columns=["text_id", "text"]):
        batch_ids = batch.column(0).to_numpy()
        hit = np.isin(batch_ids, ids)
        found.update(zip(batch_ids[hit].tolist(), batch.column(1).filter(pa.array(hit)).to_pylist()))
    return found


class Rescorer:
    """The loaded CrossEncoder, its record for the search plan, and the verified texts it reads pairs from."""

    def __init__(self, work: Path, settings: RescoreSettings):
        if settings.batch_size < 1:
            raise UsageError(f"--rescore-batch-size must be at least 1, not {settings.batch_size}")
        self.model = load_cross_encoder(settings.model, settings.device, settings.revision, settings.trust_remote_code)
        path = resolve_model(settings.model, settings.revision)
        self.record = dict(cross_encoder_fingerprint(self.model, path), name=settings.model, scores="sigmoid(logit)")
        self.batch_size, self.texts, self.seconds = settings.batch_size, workdir.verified_table(work, workdir.TEXTS), 0.0
        self.progress: tqdm | None = None  # opened when the first chunk is scored

    def score_pairs(self, queries: np.ndarray, others: np.ndarray) -> np.ndarray:
        """sigmoid(logit) of each (query id, text id) pair; a pair that repeats in the chunk is scored once."""
        import torch

        started = time.perf_counter()
        pairs, inverse = np.unique(np.stack([queries, others], axis=1), axis=0, return_inverse=True)
        text = texts_of(self.texts, np.unique(pairs))
        if self.progress is None:
            self.progress = tqdm(desc="rescore", unit="pair", total=0)
        self.progress.total += len(pairs)
        scores = np.empty(len(pairs), dtype=np.float32)
        step = self.batch_size * 32  # the bar moves every 32 batches
        for start in range(0, len(pairs), step):
            block = pairs[start: start + step]
            scores[start: start + len(block)] = self.model.predict(
                [(text[q], text[d]) for q, d in block.tolist()], batch_size=self.batch_size,
                activation_fn=torch.nn.Sigmoid(), show_progress_bar=False)
            self.progress.update(len(block))
        self.seconds += time.perf_counter() - started
        return scores[inverse.reshape(-1)]

    def columns(self, table: pa.Table) -> list[pa.Array]:
        """RESCORE_SCHEMA's columns for a chunk of searched candidates (SEARCHED_SCHEMA), in the chunk's own list
        layout: the pairs of the flattened id lists are scored, and the scores take the id lists' offsets."""
        queries = table["query_id"].to_numpy()
        lists = [table[name].combine_chunks() for name in ("candidate_ids", "given_negative_ids")]
        others = [table["positive_id"].to_numpy(), *(ids.flatten().to_numpy() for ids in lists)]
        repeated = [queries, *(np.repeat(queries, pc.list_value_length(ids).to_numpy()) for ids in lists)]
        positive, found, listed = np.split(self.score_pairs(np.concatenate(repeated), np.concatenate(others)),
                                           np.cumsum([len(o) for o in others])[:-1])
        return [pa.array(positive, type=pa.float32()),
                *(pa.ListArray.from_arrays(pc.subtract(ids.offsets, ids.offsets[0]), pa.array(scores, pa.float32()))
                  for ids, scores in zip(lists, (found, listed)))]


def with_rescores(table: pa.Table, rescorer: Rescorer | None) -> pa.Table:
    """Searched candidates with the rescore columns: the cross-encoder's scores, or nulls without one."""
    columns = rescorer.columns(table) if rescorer else [pa.nulls(table.num_rows, f.type) for f in RESCORE_SCHEMA]
    for field, column in zip(RESCORE_SCHEMA, columns):
        table = table.append_column(field, column)
    return table
