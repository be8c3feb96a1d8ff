"""GISTEmbed's guided in-batch contrastive loss, from precomputed guide embeddings.

Solatorio, "GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding
Fine-tuning", arXiv 2402.16829 (2024). A guide model decides which in-batch candidates are too similar
to an anchor to serve as its negatives. Here the guide never runs during training: its embeddings of
every text were stored by ``pipeline.embed``, so the guide's similarity blocks are matrix products.

Inputs, for B anchors with positives and M mined negatives (all M are candidates for every anchor):
    student q (B, d), p (B, d), n (M, d)       the student's embeddings, with gradients
    guide   gq (B, g), gp (B, g), gn (M, g)    the guide's L2-normalised embeddings
    ids     q_ids (B,), p_ids (B,), n_ids (M,)   text ids: equal ids are the same text
    known_false_negatives (B, F)               per anchor, ids the mining stage flagged (PAD_ID padded)

With s = cosine similarity and t = temperature, anchor i's logits are the blocks
    [ s(q_i, p) | s(q_i, n) | s(q_i, q) | s(p_i, p) ] / t,   label: column i (its own positive).
Entry (i, c) is set to -inf when
    guided:  guide(i, c) > threshold_i, threshold_i from guide(q_i, p_i) by the shared margin rule
             (gist_mining.margins), the guide's blocks built like the student's;
    known:   c's text is among anchor i's precomputed false negatives;
    always:  c's text is anchor i's query or positive text (self-pairs, duplicates),
except the label entry. Loss = cross-entropy over the logits. ``guided=False`` keeps only the
"always" masks: the plain in-batch loss, for ablations.

Under torch.distributed, candidates (p, n and their guide embeddings and ids) are gathered from every
rank with gradients; each rank's anchors see the global batch and its labels are offset by its rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn  # noqa: F401  (all_gather with gradients)
import torch.nn.functional as F

from gist_mining.margins import is_false_negative


def _gather(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Concatenate every rank's rows (gradients flow back to the local rows) and say how many each had.

    Ranks may hold different numbers of rows (anchors with fewer mined negatives), so rows are padded to
    the largest count for the collective and trimmed after.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, [tensor.shape[0]]
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.cat([tensor, tensor.new_zeros((max(sizes) - tensor.shape[0], *tensor.shape[1:]))])
    if tensor.requires_grad:
        parts = torch.distributed.nn.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)]), sizes


def gist_loss(q, p, n, gq, gp, gn, q_ids, p_ids, n_ids, known_false_negatives=None, *, temperature=0.01,
              margin_strategy="absolute", margin=0.0, guided=True, return_mask_fraction=False):
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    batch = q.shape[0]
    (all_q, sizes), (all_p, _), (all_n, _) = _gather(q), _gather(p), _gather(n)
    (all_gq, _), (all_gp, _), (all_gn, _) = _gather(gq), _gather(gp), _gather(gn)
    (all_q_ids, _), (all_p_ids, _), (all_n_ids, _) = _gather(q_ids), _gather(p_ids), _gather(n_ids)
    labels = torch.arange(batch, device=q.device) + sum(sizes[:rank])  # this rank's positives in the gathered p

    q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    all_q, all_p, all_n = (F.normalize(x, dim=-1) for x in (all_q, all_p, all_n))
    own_p = all_p[labels]
    student = torch.cat([q @ all_p.T, q @ all_n.T, q @ all_q.T, own_p @ all_p.T], dim=1)
    candidate_ids = torch.cat([all_p_ids, all_n_ids, all_q_ids, all_p_ids])

    same_text = (candidate_ids[None, :] == q_ids[:, None]) | (candidate_ids[None, :] == p_ids[:, None])
    mask = same_text
    if guided:
        # Guide scores in float32 even under autocast: a bf16 score near the threshold flips mask decisions.
        with torch.autocast(device_type=q.device.type, enabled=False):
            gq, gp_own = gq.float(), all_gp[labels].float()
            guide = torch.cat([gq @ all_gp.float().T, gq @ all_gn.float().T, gq @ all_gq.float().T,
                               gp_own @ all_gp.float().T], dim=1)
            positive_score = (gq * gp_own).sum(-1, keepdim=True)
        mask = mask | is_false_negative(guide, positive_score, margin_strategy, margin)
        if known_false_negatives is not None and known_false_negatives.numel():
            # PAD_ID never equals a real text id, so padding matches nothing.
            mask = mask | (candidate_ids[None, :, None] == known_false_negatives[:, None, :]).any(-1)
    rows = torch.arange(batch, device=q.device)
    mask[rows, labels] = False  # the true positive is never masked
    logits = student.masked_fill(mask, float("-inf")) / temperature
    loss = F.cross_entropy(logits, labels)
    if return_mask_fraction:
        return loss, mask.float().mean()
    return loss
