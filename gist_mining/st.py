"""Train inside sentence-transformers' own trainer with the stored guide: a data set and a loss from a work directory.

    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from gist_mining.st import StoredGuideGISTLoss, mined_dataset

    loss = StoredGuideGISTLoss(model, "runs/sample")
    args = SentenceTransformerTrainingArguments("out", batch_sampler="no_duplicates", report_to=["tensorboard"])
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=mined_dataset("runs/sample"), loss=loss)
    loss.log_masked_fraction(trainer)
    trainer.train()

The data set's text columns are the stock ones (anchor, positive, negative_1..N); its ``label`` column carries each
row's ids and its row in the work directory's row table, [anchor_id, query_id, positive_id, negative ids..., row],
which the stock collator turns into a tensor. The loss reads the row and the guide's vectors of its texts (the embed
stage stored them), so no guide runs during training, and
applies gist_mining.loss.GISTLoss: the in-batch guide rule, the anchors' known false negatives from mined/,
self-pairs and duplicates masked. One task per batch (train.run's --task-batches, or GISTEmbed's batches,
--task-batching paper): ``args = SentenceTransformerTrainingArguments(..., batch_sampler=task_batch_sampler(work,
"paper"))`` (gist_mining.task_batches).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sentence_transformers.base.losses.gradcache import CachedLossMixin
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import nn
from transformers import TrainerCallback

from gist_mining.distill import Distillation
from gist_mining.loss import Column, GISTLoss, LossRules
from gist_mining.st_dataset import ID_COLUMNS, mined_dataset  # noqa: F401  (mined_dataset: for users of this module)
from gist_mining.task_batches import task_batch_sampler  # noqa: F401  (for users of this module: one place to import)
from gist_mining.training.config import TrainConfig
from gist_mining.training.data import COLUMNS, TrainingData, guide_cache_bytes
from gist_mining.training.step import student_forward
from gist_mining.training.teacher_data import Teacher
from gist_mining.workdir import checked_mined_manifest

DEFAULTS = TrainConfig()  # train.run's, so that both paths train alike by default


class StoredGuideGISTLoss(CachedLossMixin, nn.Module):
    """GISTEmbed's guided in-batch loss (Solatorio, arXiv 2402.16829) for ``SentenceTransformerTrainer``, with the
    guide's stored vectors instead of a guide model: sentence-transformers' GISTEmbedLoss runs the guide every step.

    Inputs: ``mined_dataset(work, N)``'s columns (anchor, positive, negative_1..N; the ids as label). The math is
    gist_mining.loss.GISTLoss's: candidates are the batch's positives, negatives and anchors (all ranks' under
    torch.distributed, gathered with gradients), masked when the guide scores them above the anchor's threshold
    (``margin_strategy``, ``margin``), when mining found them to be the anchor's false negatives, or when they are
    its own texts. Guide vectors are in the embed stage's roles: anchors as queries, the rest as documents.
    ``mini_batch_size``: GradCache (Gao et al. 2021, arXiv 2101.06983) as CachedGISTEmbedLoss does, the forward
    passes and the loss both ``mini_batch_size`` at a time. ``masked_fraction`` holds the mean share of masked
    logits since it was last read (``log_masked_fraction`` reports it with the trainer's logs). ``rules``: the
    rules beyond GISTEmbed's mask (gist_mining.loss.LossRules: the student's own filter, hardness weighting, false
    negatives as positives, down-weighted suspects), as train.run's options set them. ``distill``: the guide as
    teacher (gist_mining.distill.Distillation: its scores, its vectors, or both), as train.run's --distill options;
    embedding distillation's map is a parameter of this loss, which the stock trainer's optimizer takes with the
    model's, and which the saved model does not hold. ``Distillation(corpus=N)``: N texts of the work directory per
    batch, embedded by this loss with the model's document prompt (their forward pass is not cached under
    GradCache), drawn from ``seed``, the rank and the batch's anchor ids: the same draw for each of MatryoshkaLoss's
    calls on a batch, and for a batch a resumed trainer meets again; ``Distillation(margin_mse=W)``: MarginMSE on the
    cross-encoder's scores of mined/ (refused here when it was not mined with them). ``guide_cache``: train.run's
    --guide-cache (by default each batch's guide vectors are read from the work directory, so memory does not grow
    with the anchors).
    """

    def __init__(self, model, work, temperature: float = DEFAULTS.temperature,
                 margin_strategy: str = DEFAULTS.in_batch_margin_strategy, margin: float = DEFAULTS.in_batch_margin,
                 mini_batch_size: int | None = None, rules: LossRules = LossRules(),
                 distill: Distillation = Distillation(), seed: int = DEFAULTS.seed,
                 guide_cache: str = DEFAULTS.guide_cache):
        super().__init__()
        self.model, self.work, self.mini_batch_size = model, Path(work), mini_batch_size
        self.uses_gradient_cache = mini_batch_size is not None  # read by MatryoshkaLoss
        self.gist = GISTLoss(temperature, margin_strategy, margin, rules=rules, distill=distill)
        # Every mined negative's vector, so that any mined_dataset(work, N) fits; checks the fingerprint chain.
        manifest = checked_mined_manifest(self.work)
        self.data = TrainingData(self.work, manifest.rules.num_negatives, model.device,
                                 guide_cache=guide_cache_bytes(guide_cache))
        self.teacher = Teacher(self.work, distill, manifest, self.data.rows, manifest.rules.num_negatives, seed,
                               model.device)
        if distill.embeddings:
            self.gist.fit_embedding_map(model.get_embedding_dimension(), self.data.guide_dimension)
            self.gist.to(model.device)
        self._masked = [0.0, 0]  # sum and count since the last read

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        if self.mini_batch_size is not None:
            return self.forward_cached(sentence_features, labels)
        return self.calculate_loss([[column] for column in embed_columns(self.model, list(sentence_features))], labels)

    def calculate_loss(self, reps: list[list[torch.Tensor]], labels: torch.Tensor | None = None, *,
                       with_backward: bool = False) -> torch.Tensor:
        """The loss from the columns' student embeddings (per mini-batch); with ``with_backward``, its gradients
        pushed back to them ``mini_batch_size`` anchors at a time and the loss returned detached (GradCache)."""
        columns = [torch.cat(column) for column in reps]
        negatives = torch.stack(columns[2:], dim=1).flatten(0, 1) if len(columns) > 2 else columns[1][:0]
        batch = self._batch(labels, columns[0], columns[1], negatives)
        if self.teacher.corpus is not None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
            texts, guide, ids = self.teacher.corpus.read(rank, *labels[:, 0].cpu().numpy().astype(np.uint64).tolist())
            vectors = student_forward(self.model, texts, self.model.device, False, self.model.prompts.get("document", ""))
            # Cut as the columns are (MatryoshkaLoss hands this loss each size in turn).
            batch.corpus = Column(vectors[:, : columns[0].shape[-1]], guide, ids)
        if with_backward:
            loss, masked = self.gist.backward_by_rows(batch, self.mini_batch_size)
        else:
            loss, masked = self.gist(batch)
        if self.model.training:
            self._masked[0] += masked.item()
            self._masked[1] += 1
        return loss

    def _batch(self, labels: torch.Tensor, queries, positives, negatives):
        """The GuidedBatch of these rows (label: ids), the negatives row by row as the label lists them."""
        if labels is None or labels.ndim != 2 or labels.shape[1] < len(ID_COLUMNS) + 1:
            raise ValueError("StoredGuideGISTLoss needs mined_dataset's label column: [anchor_id, query_id, "
                             "positive_id, negative ids..., row] per row")
        ids = labels.cpu().numpy()
        data, n = self.data, ids.shape[1] - len(ID_COLUMNS) - 1
        rows = ids[:, -1].clip(0, max(len(data) - 1, 0))
        records = data.rows.read(rows)
        held = np.column_stack([records[c] for c in ID_COLUMNS] + [records["documents"][:, :n]])
        # (a label with more negatives than the table holds comes from other mined tables: it fits no row)
        fits = ((ids[:, -1] == rows) & (records["n_documents"] >= n)
                & ((held == ids[:, :-1]).all(axis=1) if held.shape == ids[:, :-1].shape else False))
        if not fits.all():
            raise ValueError(f"{self.work}: the batch's row with anchor_id {ids[~fits, 0][0]} is not what mined/ holds "
                             f"now; rebuild the data set with mined_dataset({str(self.work)!r})")
        negatives_at = records["documents_at"][:, :n].reshape(-1)
        batch = data.batch(records, (ids[:, len(ID_COLUMNS): -1].reshape(-1), negatives_at), np.full(len(rows), n),
                           with_texts=False)
        if self.teacher.margins is not None:
            batch.soft_labels = self.teacher.margins.soft_labels(rows, np.full(len(rows), n), data.device)
        return batch.with_student(dict(zip(COLUMNS, (queries, positives, negatives))))

    def masked_fraction(self) -> float | None:
        """The mean masked fraction of the loss calls since the last read, over all ranks; then starts over."""
        total, calls = self._masked
        self._masked = [0.0, 0]
        if dist.is_available() and dist.is_initialized():
            both = torch.tensor([total, calls], dtype=torch.float64, device=self.data.device)
            dist.all_reduce(both)
            total, calls = both.tolist()
        return round(total / calls, 4) if calls else None

    def log_masked_fraction(self, trainer) -> None:
        """Add ``masked_fraction`` to each of the trainer's training logs (its log_history and every report_to).
        The callback goes first, so that the reporting callbacks see the value it adds."""
        trainer.callback_handler.callbacks.insert(0, _MaskedFraction(self))

    def get_config_dict(self) -> dict:
        return {"work": str(self.work), "temperature": self.gist.temperature, "margin_strategy": self.gist.margin_strategy,
                "margin": self.gist.margin, "mini_batch_size": self.mini_batch_size,
                **({"distill": vars(self.gist.distill)} if self.gist.distill.kind != "none" else {})}

    @property
    def citation(self) -> str:
        return """
@misc{solatorio2024gistembed,
    title={GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning},
    author={Aivin V. Solatorio},
    year={2024},
    eprint={2402.16829},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


class _MaskedFraction(TrainerCallback):
    def __init__(self, loss: StoredGuideGISTLoss):
        self.loss = loss

    def on_log(self, training_args, state, control, logs=None, **kwargs):  # transformers passes them by position
        if logs is not None and "loss" in logs:  # a training log; every rank logs it, so the all-reduce meets
            fraction = self.loss.masked_fraction()
            if fraction is not None:  # the trainer put this log in its history just before calling back
                logs["masked_fraction"] = state.log_history[-1]["masked_fraction"] = fraction
