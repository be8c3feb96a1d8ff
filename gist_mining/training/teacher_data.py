"""What the distillation terms read besides the mined rows (gist_mining.distill): the work directory's texts as
unlabelled rows (``CorpusSample``, --distill-corpus) and a cross-encoder's scores of the mined pairs
(``CrossEncoderMargins``, --distill-margin-mse); ``Teacher`` adds both to a step's batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from gist_mining import workdir
from gist_mining.distill import Distillation, SoftLabels
from gist_mining.errors import UsageError
from gist_mining.training.data import CORPUS, Batch
from gist_mining.workdir import VectorStore


class CorpusSample:
    """``per_batch`` texts of texts.parquet per step, each with the guide's stored vector in the document role (every
    text the guide embedded has one, queries included): the pool the guide embedded for mining, not only the pairs.

    The draw is a function of the seed and a key (train.run: the step and the rank; the stock trainer's loss: the
    rank and the batch's anchors), so a resumed run draws what an uninterrupted one drew; distinct rows within a
    draw, drawn again for each key. Memory holds a step's draw and one row group of texts: the texts are read from
    the row groups that hold them (texts.parquet: 65,536 rows a group), the vectors row by row from the vector
    store."""

    def __init__(self, work: Path, per_batch: int, seed: int, device):
        self.file = pq.ParquetFile(workdir.verified_table(work, workdir.TEXTS))
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.per_batch, self.seed, self.device = per_batch, seed, device
        self.store = VectorStore(work, "document")

    def rows(self, *key: int) -> np.ndarray:
        """The rows of texts.parquet drawn for ``key`` (integers), ascending."""
        total = int(self.group_starts[-1])
        rng = np.random.default_rng([int(k) % 2**64 for k in (self.seed, *key)])  # a seed sequence takes no negatives
        return np.sort(rng.choice(total, size=min(self.per_batch, total), replace=False))

    def read(self, *key: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The texts drawn for ``key``, their guide vectors (float16, as TrainingData holds them) and ids, on the
        device."""
        rows = self.rows(*key)
        groups = np.searchsorted(self.group_starts, rows, side="right") - 1
        ids, texts = [], []
        for group in np.unique(groups):
            part = self.file.read_row_group(int(group), columns=["text_id", "text"]).take(
                rows[groups == group] - self.group_starts[group])
            ids.append(part["text_id"].to_numpy())
            texts += part["text"].to_pylist()
        ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        vectors = torch.from_numpy(self.store.get(ids)).to(self.device, torch.float16)
        return texts, vectors, torch.from_numpy(ids).to(self.device)


def cross_encoder_scores(work: Path, manifest: workdir.MinedManifest) -> str:
    """Where a cross-encoder's scores of the mined pairs are: "mined" when mined/ was mined with them (--score
    rescore: its positive_score and negative_scores are the cross-encoder's), "candidates" when only the search
    stored them (--rescore-model, the rules on the guide's scores); refused in one line when neither holds any."""
    if manifest.rules.score == "rescore":
        return "mined"
    if workdir.checked_candidates_manifest(work).rescore:
        return "candidates"
    raise UsageError(f"--distill-margin-mse: {Path(work) / workdir.CANDIDATES} hold no cross-encoder's scores; search "
                     "with pipeline.mask --rescore-model NAME (and --overwrite to replace candidates searched without it)")


def _rescored_negatives(work: Path, mined: pl.DataFrame) -> pl.DataFrame:
    """Per mined row (anchor_id, negative_ids), the cross-encoder's scores of its positive and of each negative,
    looked up in candidates/ a shard at a time: a negative is one of its anchor's candidates or given negatives,
    whose pairs the search scored."""
    wanted = mined.select("anchor_id", pl.col("negative_ids").alias("id")).with_row_index("row").explode("id")
    wanted = wanted.drop_nulls("id").with_columns(pl.int_range(pl.len()).over("row").alias("position"))
    found = []
    for path in workdir.verified(work, workdir.checked_candidates_manifest(work), "search"):
        shard = pl.read_parquet(path, columns=["anchor_id", "rescore_positive_score", "candidate_ids",
                                               "rescore_candidate_scores", "given_negative_ids",
                                               "rescore_given_negative_scores"])
        pairs = pl.concat([shard.select("anchor_id", pl.col(ids).alias("id"), pl.col(scores).alias("score"))
                           .explode("id", "score") for ids, scores in (("candidate_ids", "rescore_candidate_scores"),
                                                                        ("given_negative_ids",
                                                                         "rescore_given_negative_scores"))])
        found.append(shard.select("anchor_id", pl.col("rescore_positive_score").alias("positive_score"))
                     .join(pairs.drop_nulls().unique(["anchor_id", "id"], keep="first"), on="anchor_id"))
    scored = wanted.join(pl.concat(found), on=["anchor_id", "id"], how="left").sort("row", "position")
    if scored["score"].null_count():
        raise UsageError(f"{Path(work) / workdir.CANDIDATES}: a mined negative has no cross-encoder score; run "
                         "pipeline.mask --work again")
    negatives = scored.group_by("row", maintain_order=True).agg(pl.col("score").alias("negative_scores"),
                                                                 pl.col("positive_score").first())
    return (mined.with_row_index("row").join(negatives, on="row", how="left").sort("row")
            .select("anchor_id", "positive_score", pl.col("negative_scores").fill_null([])))


class CrossEncoderMargins:
    """Per mined row (in anchor_id order, as TrainingData's rows), the cross-encoder's margin of its first
    ``negatives`` mined negatives: its score of the positive less its score of the negative, sigmoid(logit) each
    (gist_mining.rescore), read from mined/ or candidates/ (``cross_encoder_scores``). A float per negative, for
    the life of the run."""

    def __init__(self, work: Path, manifest: workdir.MinedManifest, anchor_ids: np.ndarray, negatives: int):
        source = cross_encoder_scores(work, manifest)
        mined = pl.read_parquet(workdir.verified(work, manifest, "mine"),
                                columns=["anchor_id", "positive_score", "negative_ids", "negative_scores"]).sort("anchor_id")
        if not np.array_equal(mined["anchor_id"].to_numpy(), anchor_ids):
            raise UsageError(f"{Path(work) / workdir.MINED}: its rows changed while the run read them; run again")
        mined = mined.with_columns(pl.col("negative_ids").list.head(negatives))
        rows = mined if source == "mined" else _rescored_negatives(work, mined.select("anchor_id", "negative_ids"))
        scores = rows["negative_scores"].list.head(negatives)
        counts = scores.list.len().to_numpy()
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        flat = scores.explode().drop_nulls().to_numpy().astype(np.float32)
        self.margins = np.repeat(rows["positive_score"].to_numpy().astype(np.float32), counts) - flat

    def soft_labels(self, rows: np.ndarray, lengths: np.ndarray, device) -> SoftLabels:
        """The margins of a batch whose negatives column holds, row after row, ``lengths[i]`` texts of ``rows[i]``:
        its mined negatives first (those have margins), then any known false negatives (NaN)."""
        rows, lengths = np.asarray(rows, np.int64), np.asarray(lengths, np.int64)
        owner = np.repeat(np.arange(len(rows)), lengths)
        position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        scored = position < (self.starts[rows + 1] - self.starts[rows])[owner]
        margins = np.full(len(owner), np.nan, np.float32)
        margins[scored] = self.margins[self.starts[rows][owner][scored] + position[scored]]
        return SoftLabels(torch.from_numpy(owner).to(device), torch.from_numpy(margins).to(device))


class Teacher:
    """The corpus rows and the cross-encoder's margins a Distillation asks for, added to each step's batch."""

    def __init__(self, work: Path, distill: Distillation, manifest: workdir.MinedManifest, rows: workdir.RowTable,
                 negatives: int, seed: int, device):
        self.device = device
        self.corpus = CorpusSample(work, distill.corpus, seed, device) if distill.corpus else None
        self.margins = (CrossEncoderMargins(work, manifest, rows.every("anchor_id")[0], negatives) if distill.margin_mse
                        else None)

    def add(self, batch: Batch, rows, key: tuple[int, ...]) -> Batch:
        """``batch`` of ``rows`` with the corpus texts drawn for ``key`` (train.run: the step and the rank; a fourth
        column, "corpus") and the margins of its negatives."""
        if self.corpus is not None:
            batch.texts[CORPUS], batch.guide[CORPUS], batch.ids[CORPUS] = self.corpus.read(*key)
        if self.margins is not None:
            batch.soft_labels = self.margins.soft_labels(rows, batch.negatives_per_row, self.device)
        return batch
