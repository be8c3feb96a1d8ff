"""The guide as teacher: distillation terms of GISTLoss, from the guide's stored vectors (issue #35).

The guide's vector of every text in a batch is stored (pipeline.embed), so its score of any pair in the batch is a
matrix product: a teacher signal with no model but the student. Two terms, each an option of the one loss:

scores      RocketQAv2 (Ren et al., arXiv 2110.07367) and the MarginMSE line (Hofstaetter et al., arXiv 2010.02666)
            train the student's score distribution toward a teacher's: here KL(teacher || student) between the
            guide's softmax (its cosines over a teacher temperature) and the student's (the loss's own logits) over
            each anchor's in-batch candidates, the same blocks [q-P | q-N | q-Q | p-P] as the contrastive loss.
embeddings  EmbeddingGemma (arXiv 2509.20354) and jina-embeddings-v5 (arXiv 2602.15547) match the teacher's vectors:
            here 1 - cos(map(student vector), guide vector) for every query, positive and negative of the batch,
            through a trained linear map where the two sizes differ (a parameter of the loss, not of the model, so
            the saved student does not hold it); sentence-transformers' EmbedDistillLoss does the same from a column.
corpus      the guide embedded every text of the pool for mining, not only the pairs', so any of them is a distillation
            row with its teacher vector already stored: ``corpus`` texts per batch (gist_mining.training.teacher_data
            samples them), whose student vectors are matched to the guide's (embeddings), and which join each anchor's
            candidates as a query-corpus block (scores) in the teacher's and the student's softmax of the KL only,
            never in the contrastive loss: they are unlabelled, so no anchor's cross-entropy may count them as its
            negatives; the KL still teaches the student how the guide ranks texts the pairs never show.
margin_mse  Hofstaetter et al. 2020 (arXiv 2010.02666): (s(q, p) - s(q, n) - (t(q, p) - t(q, n)))^2 over each anchor's
            own mined negatives, the student's cosines s against a cross-encoder's scores t, stored where pipeline.mask
            rescored the candidates (--rescore-model; gist_mining.training.teacher_data reads them). Those scores
            are sigmoid(logit) (gist_mining.rescore), so the teacher's margins lie in (-1, 1), on the cosines' scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

DISTILL = ("none", "scores", "embeddings", "scores+embeddings")
# Which distributions leave out the anchor's suspects (the entries the GIST mask and the other filters take out).
DISTILL_MASKS = ("both", "teacher", "student", "none")


@dataclass(frozen=True)
class Distillation:
    """What GISTLoss adds from the guide as teacher; the default adds nothing.

    kind: "scores", "embeddings" or both ("scores+embeddings"); "none": off.
    weight: each term's weight beside the contrastive loss (1 + ... ).
    temperature: the teacher's softmax temperature over the guide's cosines (the student's is the loss's own).
    mask: whether the suspects are left out of the teacher's distribution, the student's, both or neither. The
        anchor's own texts are left out of both always (every model scores them near 1). Left out of the teacher's,
        a suspect gets probability 0, so the KL pushes the student's mass there down; left out of the student's
        alone, the teacher's mass on it is not matched (its terms are dropped from the sum), so "student" is
        "both" with each anchor's KL weighted by the teacher's mass off its suspects.
    corpus: unlabelled texts of the work directory per batch (per process) as extra rows of the terms ``kind``
        names (0: none).
    margin_mse: MarginMSE's weight on the cross-encoder's stored scores (0: off; with any ``kind``).
    """

    kind: str = "none"
    weight: float = 1.0
    temperature: float = 0.05
    mask: str = "both"
    corpus: int = 0
    margin_mse: float = 0.0

    def __post_init__(self):
        if self.kind not in DISTILL or self.mask not in DISTILL_MASKS:
            raise ValueError(f"distill must be one of {DISTILL}, distill_mask one of {DISTILL_MASKS}")
        if self.weight <= 0 or self.temperature <= 0:
            raise ValueError("distill_weight and distill_temperature must be > 0")
        if self.corpus < 0 or self.margin_mse < 0:
            raise ValueError("distill_corpus and distill_margin_mse must be >= 0")
        if self.corpus and self.kind == "none":
            raise ValueError("distill_corpus rows are distilled by --distill scores or embeddings: name one")

    @property
    def scores(self) -> bool:
        return "scores" in self.kind

    @property
    def embeddings(self) -> bool:
        return "embeddings" in self.kind


def score_distillation(cosines: torch.Tensor, guide: torch.Tensor, always: torch.Tensor, suspect: torch.Tensor,
                       student_temperature: float, d: Distillation) -> torch.Tensor:
    """Sum over the anchors (rows) of KL(teacher || student) over their entries (B, C): the guide's cosines
    ``guide`` over ``d.temperature`` against the student's ``cosines`` over ``student_temperature``; ``always``
    left out of both, ``suspect`` as ``d.mask`` says."""
    teacher_out = always | suspect if d.mask in ("both", "teacher") else always
    student_out = always | suspect if d.mask in ("both", "student") else always
    teacher = (guide / d.temperature).masked_fill(teacher_out, float("-inf")).log_softmax(1)
    student = (cosines / student_temperature).masked_fill(student_out, float("-inf")).log_softmax(1)
    counted = ~teacher_out & ~student_out  # where both distributions have mass (the label always is)
    # Filled with 0 where not counted, so that no -inf enters the product (nor a NaN its gradient).
    teacher, student = teacher.masked_fill(~counted, 0.0), student.masked_fill(~counted, 0.0)
    return (teacher.exp() * (teacher - student) * counted).sum()


class EmbeddingMap(nn.Module):
    """The student's vectors into the guide's space: a linear map (no bias: the cosine ignores scale, not
    offsets) where the sizes differ, nothing where they are equal."""

    def __init__(self, student_dim: int, guide_dim: int):
        super().__init__()
        self.student_dim, self.guide_dim = student_dim, guide_dim
        self.linear = nn.Linear(student_dim, guide_dim, bias=False) if student_dim != guide_dim else None

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        if vectors.shape[-1] != self.student_dim:
            raise ValueError(f"embedding distillation maps {self.student_dim}-dimensional student vectors, not "
                             f"{vectors.shape[-1]} (Matryoshka sizes are not distilled: train them without it)")
        return vectors if self.linear is None else self.linear(vectors.to(self.linear.weight.dtype))


def embedding_distillation(columns, embedding_map: EmbeddingMap) -> torch.Tensor:
    """Sum over every row of the columns (queries, positives, negatives: gist_mining.loss.Column) of
    1 - cos(map(student vector), guide vector)."""
    return sum((1 - F.cosine_similarity(embedding_map(c.student_vectors), c.guide_vectors.float(), dim=-1)).sum()
               for c in columns)


@dataclass
class SoftLabels:
    """A cross-encoder's margins for this rank's mined negatives (the batch's negatives column, row for row):
    ``owner`` (M,) the anchor (its row among this rank's queries) each negative is mined for, ``margins`` (M,) the
    cross-encoder's score of that anchor's positive less its score of the negative; NaN where it scored none (a
    known false negative the batch brought in, --false-negatives-in-batch)."""

    owner: torch.Tensor
    margins: torch.Tensor


def margin_mse(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, labels: SoftLabels
               ) -> torch.Tensor:
    """Sum over the (anchor, own negative) pairs with a margin of (cos(q, p) - cos(q, n) - margin)^2 (MarginMSE)."""
    q, p, n = (F.normalize(v.float(), dim=-1) for v in (queries, positives, negatives))
    scored = ~labels.margins.isnan()
    owner = labels.owner[scored]
    student = (q[owner] * p[owner]).sum(-1) - (q[owner] * n[scored]).sum(-1)
    return ((student - labels.margins[scored].float()) ** 2).sum()
