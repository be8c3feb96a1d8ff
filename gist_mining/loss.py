"""GISTEmbed's guided in-batch contrastive loss, from precomputed guide embeddings.

Solatorio, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding
Fine-tuning", arXiv 2402.16829 (2024). A guide model decides which in-batch candidates are too similar
to an anchor to serve as its negatives. Here the guide never runs during training: its embeddings of
every text were stored by ``pipeline.embed``, so the guide's similarity blocks are matrix products.
The rules that came after it (LossRules: the student's own filter, hardness weighting, false negatives as
positives, down-weighted suspects) are options of the same loss, so that they compare on equal terms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (all_gather with gradients)
import torch.nn.functional as F
from torch import nn

from gist_mining.distill import (
    Distillation,
    EmbeddingMap,
    SoftLabels,
    embedding_distillation,
    margin_mse,
    score_distillation,
)
from gist_mining.margin import is_false_negative


@dataclass
class Column:
    """One column of a batch (queries, positives or negatives), row for row."""

    student_vectors: torch.Tensor  # (n, d) the student's embeddings, with gradients
    guide_vectors: torch.Tensor  # (n, g) the guide's stored, L2-normalised embeddings
    ids: torch.Tensor  # (n,) text ids: equal ids are the same text


@dataclass
class GuidedBatch:
    """B anchors: their queries and positives (B rows each), their mined negatives (M rows, all of which
    are candidates for every anchor), and per anchor the ids mining flagged as false negatives (B, F),
    padded with PAD_ID; optionally (B,) which anchors the guide cannot judge, when mining took them out of
    the margin rule (MiningRules.unjudged_rank_min): the in-batch rule leaves them out too. For the distillation
    terms (gist_mining.distill): ``corpus``, unlabelled texts of the work directory (document role), and
    ``soft_labels``, a cross-encoder's margins for the mined negatives."""

    queries: Column
    positives: Column
    negatives: Column
    known_false_negatives: torch.Tensor
    unjudged: torch.Tensor | None = None
    corpus: Column | None = None
    soft_labels: SoftLabels | None = None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_gather(tensor: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's rows (rank r holds sizes[r]); gradients flow back to the local rows."""
    padded = torch.cat([tensor, tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))])
    if tensor.requires_grad:
        parts = torch.distributed.nn.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return [part[:size] for part, size in zip(parts, sizes)]


def _gather_candidates(batch: GuidedBatch, corpus: bool = False) -> tuple:
    """The global batch's positives, negatives and queries (and its corpus texts, with ``corpus``); where this
    rank's anchors start among all anchors, and how many there are. Ranks may hold different numbers of rows;
    four collectives in all: the row counts, then the student embeddings, guide embeddings and ids of the
    columns together."""
    columns = (batch.positives, batch.negatives, batch.queries) + ((batch.corpus,) if corpus else ())
    if not _distributed():
        return (*columns, 0, batch.queries.ids.shape[0])
    counts = torch.tensor([c.ids.shape[0] for c in columns], device=batch.queries.ids.device)
    per_rank = [c.tolist() for c in _all_gather(counts, [len(columns)] * dist.get_world_size())]
    gathered = {name: [part.split(n) for part, n in
                       zip(_all_gather(torch.cat([getattr(c, name) for c in columns]), [sum(n) for n in per_rank]),
                           per_rank)]
                for name in ("student_vectors", "guide_vectors", "ids")}
    out = [Column(**{name: torch.cat([by_rank[column] for by_rank in parts]) for name, parts in gathered.items()})
           for column in range(len(columns))]
    return (*out, sum(n[0] for n in per_rank[: dist.get_rank()]), sum(n[0] for n in per_rank))


def _in_rows(candidate_ids: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """(B, C): is candidate c among row b's known ids. Per-row binary search: memory B x C, not B x C x F."""
    if known.numel() == 0:
        return torch.zeros((known.shape[0], candidate_ids.shape[0]), dtype=torch.bool, device=candidate_ids.device)
    known, _ = known.sort(dim=1)
    values = candidate_ids.expand(known.shape[0], -1).contiguous()
    at = torch.searchsorted(known, values).clamp(max=known.shape[1] - 1)
    return known.gather(1, at) == values  # PAD_ID never equals a real text id


CONTROLS = (None, "random", "hardest")
HARDNESS_NEGATIVES = ("in-batch", "mined", "all")
FALSE_NEGATIVES = ("mask", "positives")


@dataclass(frozen=True)
class LossRules:
    """What GISTLoss does beyond GISTEmbed's mask; the defaults are GISTEmbed's loss. An anchor's *suspects* are the
    entries its filters judge false negatives: the guide's (and mining's known ones) and, with ``self_filter``, the
    student's own.

    self_filter, self_margin: Qwen3-Embedding's rule (Zhang et al., arXiv 2506.05176): entry (i, c) is a suspect
        when the student's detached score s(i, c) > s(q_i, p_i) + self_margin, in every block; no guide needed.
    hardness_strength, hardness_negatives: hardness weighting (Lan et al. 2025, arXiv 2503.04812; sentence-
        transformers' MultipleNegativesRankingLoss ``hardness_mode``): a negative's logit s / t is raised by
        alpha * stopgrad(s), in the query-document blocks only, as there: "in-batch" the q-P block (the other
        anchors' positives), "mined" the q-N block (the mined negatives of every anchor: the batch does not say
        whose), "all" both.
    false_negatives: "mask" the suspects; "positives" (RLHN, Thakur et al., arXiv 2505.16967): in the
        query-document blocks, the suspects that are the anchor's known false negatives from mined/ (mining left
        them out of its negatives: train.run's TrainingData brings them into the batch), or that the guide scores
        above its positive by more than ``promote_margin``, count as extra positives of a
        multi-positive loss, -log(sum over positives of softmax); other suspects are masked or down-weighted.
    suspect_weight: 0 masks the suspects; W > 0 keeps them with weight W in the softmax (their logit plus log W),
        down-weighted instead of masked, as ColPali's loss does with suspicious negatives.
    """

    self_filter: bool = False
    self_margin: float = 0.1
    hardness_strength: float = 0.0
    hardness_negatives: str = "all"
    false_negatives: str = "mask"
    promote_margin: float = 0.05
    suspect_weight: float = 0.0

    def __post_init__(self):
        if self.hardness_negatives not in HARDNESS_NEGATIVES or self.false_negatives not in FALSE_NEGATIVES:
            raise ValueError(f"hardness_negatives must be one of {HARDNESS_NEGATIVES}, false_negatives one of "
                             f"{FALSE_NEGATIVES}")
        if self.hardness_strength < 0 or not 0 <= self.suspect_weight <= 1:
            raise ValueError("hardness_strength must be >= 0 and suspect_weight in [0, 1]")


@dataclass
class Entries:
    """Anchors' entries over the candidates: the student's cosines and what the rules made of each (B, C)."""

    cosines: torch.Tensor
    always: torch.Tensor  # masked whatever the rules: the anchor's own texts (never its label)
    suspect: torch.Tensor  # judged false negatives (not always, not the label)
    positives: torch.Tensor  # the label, and suspects counted as positives
    hardened: torch.Tensor  # (C,) the columns hardness weighting raises
    labels: torch.Tensor  # (B,) each anchor's own positive's column
    guide: torch.Tensor | None = None  # the guide's scores of the same pairs, where the rules or distillation use them
    distill_only: torch.Tensor | None = None  # (C,) the corpus columns: in score distillation's softmax only

    def masked(self) -> torch.Tensor:
        """The entries the rules take out of the contrastive loss's plain negatives (over its own columns)."""
        taken = self.always | self.suspect
        return taken if self.distill_only is None else taken[:, ~self.distill_only]


def same_count(chosen: torch.Tensor, eligible: torch.Tensor, logits: torch.Tensor, how: str) -> torch.Tensor:
    """Per row, as many ``eligible`` entries as ``chosen`` holds there: drawn at random (torch's generator,
    so seeded by torch.manual_seed), or the ones with the highest ``logits`` (the student's hardest)."""
    count = (chosen & eligible).sum(dim=1, keepdim=True)
    score = torch.rand(logits.shape, device=logits.device) if how == "random" else logits.detach().float()
    order = score.masked_fill(~eligible, float("-inf")).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return eligible & (rank < count)


class GISTLoss(nn.Module):
    """Cross-entropy over in-batch candidates, with the ones the guide calls false negatives masked.

    With s = cosine similarity and t = temperature, anchor i's logits are the blocks
        [ s(q_i, P) | s(q_i, N) | s(q_i, Q) | s(p_i, P) ] / t,   label: its own positive in P,
    over the global batch's positives P, negatives N and queries Q (all ranks under torch.distributed;
    gathered with gradients). Entry (i, c) is set to -inf, except the label, when
        guided: guide(i, c) > threshold_i, with threshold_i from guide(q_i, p_i) by the shared margin rule
                (gist_mining.mining); the guide's score of each entry pairs the same texts as the student's
                (q-P, q-N, q-Q, p-P), so a candidate is judged against the text it is compared with;
        known:  c's text is one of anchor i's false negatives found at mining time;
        always: c's text is anchor i's own query or positive text (self-pairs, duplicates).
    Roles (models with a query prompt unlike the document prompt embed a text differently as each): every
    column's vectors, the student's and the guide's, are in its role, queries in the query role, positives and
    negatives in the document role (the student applies its prompts per column; the guide's vectors are
    looked up in that role). So each block scores the pair in the roles the student sees it in:
        q-P, q-N  query x document: retrieval, the pair the guide scored at mining time (and threshold_i);
        q-Q       query x query: the student compares two queries, both with the query prompt; the guide's
                  same-role score is its symmetric similarity, which says whether q_j restates q_i;
        p-P       document x document: two passages, both with the document prompt, likewise.
    A document-role vector for the queries would score them as passages, which they are not in this batch.
    ``guided=False`` keeps only the "always" masks: the plain in-batch loss, for ablations. ``control`` keeps
    the guide's count per anchor row but moves the masks (controls that attribute a gain to the guide's choice):
    "random" masks as many entries, drawn from torch's seeded generator; "hardest" the student's highest.
    Anchors in ``batch.unjudged`` get none of the guide's masks (guided, known). ``rules`` (LossRules) adds the
    later rules: the entries the guide (or the control) or the student's own filter flags are the anchor's
    suspects, masked unless the rules down-weight them or count them as positives (then the loss is -log of the
    softmax's mass on the positives).
    ``distill`` (gist_mining.distill.Distillation) adds the guide as teacher: KL from the guide's softmax over each
    anchor's entries to the student's, and/or the student's vectors matched to the guide's (the map between their
    sizes: ``fit_embedding_map``), over the batch's ``corpus`` texts too (score distillation: a fifth block
    s(q_i, corpus) in both softmaxes, masked as the others, and never in the contrastive loss), and MarginMSE on a
    cross-encoder's margins (``batch.soft_labels``).
    Returns the loss (the global batch's mean once averaged over ranks) and this rank's masked fraction (the
    share of entries taken out of the plain negatives: masked, down-weighted or counted as positives).
    """

    def __init__(self, temperature: float, margin_strategy: str, margin: float, guided: bool = True,
                 control: str | None = None, rules: LossRules = LossRules(), distill: Distillation = Distillation()):
        # the trainer's defaults: train.run.TrainConfig
        super().__init__()
        if control not in CONTROLS:
            raise ValueError(f"control must be one of {CONTROLS}")
        if control is not None and (rules.self_filter or rules.false_negatives != "mask"):
            raise ValueError("a control moves the guide's masks alone: not with self_filter or false negatives as positives")
        if rules.false_negatives == "positives" and not guided:
            raise ValueError("false negatives as positives are the guide's and mining's: they need guided=True")
        if control is not None and distill.corpus:
            raise ValueError("a control moves the guide's masks within the contrastive loss: not with corpus rows")
        self.temperature, self.margin_strategy, self.margin, self.guided = temperature, margin_strategy, margin, guided
        self.control, self.rules, self.distill = control, rules, distill
        self.embedding_map: EmbeddingMap | None = None

    def fit_embedding_map(self, student_dim: int, guide_dim: int) -> None:
        """Embedding distillation's map from the student's size to the guide's (trained with the student: its
        parameters are the loss's)."""
        self.embedding_map = EmbeddingMap(student_dim, guide_dim)

    def forward(self, batch: GuidedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        entries, total = self._batch_entries(batch)
        loss = self._loss(entries, total)
        rows = self._row_terms(batch, total)
        return loss if rows is None else loss + rows, entries.masked().float().mean()

    def _row_terms(self, batch: GuidedBatch, total: int) -> torch.Tensor | None:
        """The terms over this rank's rows, not anchors by candidates (every text is some rank's), weighted and
        scaled as _loss scales: embedding distillation (per anchor, the sum over the batch's texts, its corpus texts
        included, of 1 - cos(map(student), guide)) and MarginMSE; None without either."""
        if self.distill.corpus and batch.corpus is None:
            raise ValueError("corpus distillation needs the batch's corpus texts (GuidedBatch.corpus)")
        terms = []
        if self.distill.embeddings:
            if self.embedding_map is None:
                raise ValueError("embedding distillation needs the map between the sizes: call fit_embedding_map first")
            columns = (batch.queries, batch.positives, batch.negatives) + ((batch.corpus,) if self.distill.corpus else ())
            terms.append(self.distill.weight * embedding_distillation(columns, self.embedding_map))
        if self.distill.margin_mse:
            if batch.soft_labels is None:
                raise ValueError("MarginMSE needs the cross-encoder's margins of the batch (GuidedBatch.soft_labels)")
            terms.append(self.distill.margin_mse * margin_mse(batch.queries.student_vectors,
                                                              batch.positives.student_vectors,
                                                              batch.negatives.student_vectors, batch.soft_labels))
        world = dist.get_world_size() if _distributed() else 1
        return sum(terms) * world / total if terms else None

    def backward_by_rows(self, batch: GuidedBatch, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """forward's loss and masked fraction, with the loss's gradient pushed back through the batch's student
        embeddings as ``loss.backward()`` would, computed ``rows`` anchors at a time: no matrix of all anchors
        by all candidates (student scores, guide scores, mask) is ever whole, only ``rows`` x C of each (for
        GradCache, whose loss over B >> M anchors would otherwise outweigh a forward pass of M texts). The
        candidates are gathered and normalised once, and their gradients go back through both in one backward
        call, so ranks may run different numbers of chunks. The "random" control draws per chunk (on CPU the
        same numbers as one draw; on CUDA other numbers from the same distribution)."""
        *columns, start, total = _gather_candidates(batch, self._corpus_candidates(batch))
        units = [F.normalize(c.student_vectors, dim=-1) for c in columns]
        # Cut from the graph, so that each chunk's backward stops at these leaves; the candidates' guide vectors
        # in float32 once (each chunk would convert them all again).
        candidates = [Column(u.detach().requires_grad_(), c.guide_vectors.float(), c.ids) for u, c in zip(units, columns)]
        anchors = [Column(c.student_vectors.detach().requires_grad_(), c.guide_vectors, c.ids)
                   for c in (batch.queries, batch.positives)]
        n, width = batch.queries.ids.shape[0], 1
        loss = masked = torch.zeros((), device=batch.queries.student_vectors.device)
        for first in range(0, n, rows):
            part = slice(first, first + rows)
            chunk = GuidedBatch(*(Column(c.student_vectors[part], c.guide_vectors[part], c.ids[part]) for c in anchors),
                                batch.negatives, batch.known_false_negatives[part],
                                None if batch.unjudged is None else batch.unjudged[part])
            entries = self._entries(chunk, candidates, start + first)
            chunk_loss = self._loss(entries, total)
            chunk_loss.backward()
            loss, masked = loss + chunk_loss.detach(), masked + entries.masked().sum()
            width = entries.masked().shape[1]
        roots = [batch.queries.student_vectors, batch.positives.student_vectors, *units]
        leaves = [c.student_vectors for c in (*anchors, *candidates)]
        # The row terms in one piece (rows, not anchors by candidates); this rank's negatives and corpus texts are
        # roots too.
        own = {"negatives": batch.negatives, **({"corpus": batch.corpus} if self.distill.corpus else {})}
        cut = {name: Column(c.student_vectors.detach().requires_grad_(), c.guide_vectors, c.ids) for name, c in own.items()}
        term = self._row_terms(replace(batch, queries=anchors[0], positives=anchors[1], **cut), total)
        if term is not None:
            term.backward()
            loss = loss + term.detach()
            roots += [c.student_vectors for c in own.values()]
            leaves += [c.student_vectors for c in cut.values()]
        grads = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in leaves]
        # Through the normalisation and the gather once: one collective, whatever the number of chunks.
        torch.autograd.backward(roots, grads)
        return loss, masked / max(n * width, 1)

    def _loss(self, e: Entries, total: int) -> torch.Tensor:
        """-log of the softmax's mass on the positives (cross-entropy when the label is the only one), summed."""
        negatives = ~e.positives
        logits = e.cosines / self.temperature
        if self.rules.hardness_strength:
            logits = logits + self.rules.hardness_strength * e.cosines.detach() * (negatives & e.hardened)
        suspects, weight = e.suspect & negatives, self.rules.suspect_weight
        out = e.always if e.distill_only is None else e.always | e.distill_only  # never the corpus columns
        logits = logits.masked_fill(out | suspects if weight == 0 else out, float("-inf"))
        if weight:
            logits = logits + math.log(weight) * suspects
        loss = -logits.log_softmax(1).masked_fill(negatives, float("-inf")).logsumexp(1).sum()
        if self.distill.scores:
            loss = loss + self.distill.weight * score_distillation(e.cosines, e.guide, e.always, e.suspect,
                                                                   self.temperature, self.distill)
        # Scaled so that averaging over ranks (DDP) gives the global batch's mean, whatever each rank's share.
        world = dist.get_world_size() if _distributed() else 1
        return loss * world / total

    def masked_logits(self, batch: GuidedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This rank's anchors' cosine logits over the candidates (before the temperature), the mask (entries
        the rules take out of the plain negatives: masked, down-weighted or made positives), the labels, and the
        global batch's number of anchors."""
        e, total = self._batch_entries(batch)
        return e.cosines, e.always | e.suspect, e.labels, total

    def _corpus_candidates(self, batch: GuidedBatch) -> bool:
        """Whether the batch's corpus texts join the candidates: for score distillation's softmax."""
        return bool(self.distill.corpus) and self.distill.scores and batch.corpus is not None

    def _batch_entries(self, batch: GuidedBatch) -> tuple[Entries, int]:
        *columns, start, total = _gather_candidates(batch, self._corpus_candidates(batch))
        units = [Column(F.normalize(c.student_vectors, dim=-1), c.guide_vectors, c.ids) for c in columns]
        return self._entries(batch, units, start), total

    def _entries(self, batch: GuidedBatch, candidates: list[Column], start: int) -> Entries:
        """The anchors' entries over the gathered candidates (positives, negatives, queries, and the corpus texts
        where score distillation takes them), their student embeddings L2-normalised already; ``start``: where this
        batch's anchors start among all."""
        q, p = batch.queries, batch.positives
        all_p, all_n, all_q, *corpus = candidates
        labels = torch.arange(q.ids.shape[0], device=q.ids.device) + start
        qs, ps = F.normalize(q.student_vectors, dim=-1), F.normalize(p.student_vectors, dim=-1)
        P, N, Q, *C = (c.student_vectors for c in candidates)
        logits = torch.cat([qs @ P.T, qs @ N.T, qs @ Q.T, ps @ P.T, *(qs @ c.T for c in C)], dim=1)
        candidate_ids = torch.cat([all_p.ids, all_n.ids, all_q.ids, all_p.ids, *(c.ids for c in corpus)])
        mask = (candidate_ids[None, :] == q.ids[:, None]) | (candidate_ids[None, :] == p.ids[:, None])
        is_label = torch.zeros_like(mask)
        is_label[torch.arange(len(labels), device=mask.device), labels] = True  # the true positive is never masked
        mask &= ~is_label
        suspect = torch.zeros_like(mask)
        promoted = torch.zeros_like(mask)
        guide, positive_score = self._guide_scores(q, p, *candidates) if self.guided or self.distill.scores \
            else (None, None)
        if self.guided:
            known = _in_rows(candidate_ids, batch.known_false_negatives)
            guided = is_false_negative(guide, positive_score, self.margin_strategy, self.margin) | known
            if batch.unjudged is not None:
                guided &= ~batch.unjudged[:, None]
            eligible = ~mask & ~is_label
            suspect = guided & eligible if self.control is None else same_count(guided, eligible, logits, self.control)
            if self.rules.false_negatives == "positives":
                promoted = suspect & (known | (guide > positive_score + self.rules.promote_margin))
        if self.rules.self_filter:
            scores = logits.detach()
            suspect |= (scores > scores.gather(1, labels[:, None]) + self.rules.self_margin) & ~mask & ~is_label
        # The query-document blocks (q-P, q-N): where hardness weighting applies and false negatives become positives.
        block = torch.arange(len(candidate_ids), device=mask.device)
        in_batch, mined = block < len(all_p.ids), (block >= len(all_p.ids)) & (block < len(all_p.ids) + len(all_n.ids))
        hardened = {"in-batch": in_batch, "mined": mined, "all": in_batch | mined}[self.rules.hardness_negatives]
        distill_only = block >= len(candidate_ids) - sum(len(c.ids) for c in corpus) if corpus else None
        return Entries(logits, mask, suspect, is_label | (promoted & (in_batch | mined)[None, :]), hardened, labels, guide,
                       distill_only)

    def _guide_scores(self, q: Column, p: Column, all_p: Column, all_n: Column, all_q: Column, *corpus: Column
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guide's score of every entry and of each anchor's positive, (B, C) and (B, 1)."""
        # Float32 even under autocast: a bf16 score near the threshold flips mask decisions.
        with torch.autocast(device_type=q.guide_vectors.device.type, enabled=False):
            gq, gp = q.guide_vectors.float(), p.guide_vectors.float()
            P, N, Q, *C = (c.guide_vectors.float() for c in (all_p, all_n, all_q, *corpus))
            guide = torch.cat([gq @ P.T, gq @ N.T, gq @ Q.T, gp @ P.T, *(gq @ c.T for c in C)], dim=1)
            return guide, (gq * gp).sum(-1, keepdim=True)


def truncated(batch: GuidedBatch, size: int) -> GuidedBatch:
    """The batch with the student's embeddings cut to their first ``size`` dimensions (GISTLoss normalises them)."""
    def cut(column: Column) -> Column:
        return replace(column, student_vectors=column.student_vectors[..., :size])

    return replace(batch, queries=cut(batch.queries), positives=cut(batch.positives), negatives=cut(batch.negatives),
                   corpus=None if batch.corpus is None else cut(batch.corpus))


def summed_over_sizes(loss_of, batch: GuidedBatch, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Matryoshka representation learning (Kusupati et al., arXiv 2205.13147), as sentence-transformers'
    MatryoshkaLoss: ``loss_of(batch)``'s loss summed over the student embeddings cut to each of ``sizes`` (the
    whole embeddings when there are none), and the mean of its masked fractions."""
    if not sizes:
        return loss_of(batch)
    results = [loss_of(truncated(batch, size)) for size in sizes]
    return sum(loss for loss, _ in results), sum(masked for _, masked in results) / len(results)


@dataclass(frozen=True)
class GuideFilter:
    """A choice of the trainers' --guide-filter: the GISTLoss it makes (``guided``, ``control``,
    LossRules.self_filter) and how the trainer describes it ({strategy}, {margin}, {self_margin} filled in)."""

    guided: bool
    control: str | None
    self_filter: bool
    says: str


GUIDE_FILTERS = {
    "precomputed": GuideFilter(True, None, False, "{strategy} margin {margin}"),
    "none": GuideFilter(False, None, False, "off (plain in-batch loss)"),
    "random": GuideFilter(True, "random", False, "control: as many logits as the guide masks, at random"),
    "hardest": GuideFilter(True, "hardest", False, "control: as many logits as the guide masks, the student's highest"),
    "self": GuideFilter(False, None, True, "the student's own, margin {self_margin}"),
    "guide+self": GuideFilter(True, None, True, "{strategy} margin {margin} or the student's own, margin {self_margin}"),
}
