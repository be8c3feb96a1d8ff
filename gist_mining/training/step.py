"""One optimizer step: the student's forward passes (one per column, or GradCache mini-batches), the loss, the
gradients averaged across ranks, the update."""

from __future__ import annotations

import torch
import torch.distributed as dist

from gist_mining.loss import GISTLoss, summed_over_sizes
from gist_mining.training.data import COLUMN_ROLES, Batch


def student_forward(model, texts: list[str], device, bf16: bool, prompt: str) -> torch.Tensor:
    """The student's sentence embeddings (float32) of prompt + text, with gradients; bf16 autocast on CUDA if
    asked. The prompt goes through preprocess, as encode does (pooling may leave its tokens out)."""
    if not texts:  # a rank whose anchors have no mined negatives; requires grad so that its gather joins backward
        return torch.zeros((0, model.get_embedding_dimension()), device=device, requires_grad=True)
    features = {k: v.to(device) if hasattr(v, "to") else v for k, v in model.preprocess(texts, prompt=prompt).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16 and "cuda" in str(device)):
        return model(features)["sentence_embedding"].float()


def train_step(model, loss_fn: GISTLoss, batch: Batch, optimizer, scheduler, device, world: int, *, bf16: bool,
               mini_batch_size: int, sizes: tuple[int, ...]) -> tuple:
    """``sizes``: Matryoshka embedding sizes (the loss summed over each cut); ``mini_batch_size``: GradCache's."""
    if mini_batch_size and sum(map(len, batch.texts.values())) > mini_batch_size:
        loss, masked = cached_backward(model, loss_fn, batch, device, mini_batch_size, bf16, sizes)
    else:
        # One forward pass per column: queries are short and documents long, so one pass over all three
        # pads every query to the longest document; measured 1.8x slower (MiniLM, batch 32 of the sample,
        # CPU: 2.46 s against 1.34 s a step).
        student = {c: student_forward(model, batch.texts[c], device, bf16, model.prompts[COLUMN_ROLES[c]])
                   for c in batch.columns}
        loss, masked = summed_over_sizes(loss_fn, batch.with_student(student), sizes)
        loss.backward()
    if world > 1:
        average_gradients([*model.parameters(), *loss_fn.parameters()], world)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), masked


def cached_backward(model, loss_fn: GISTLoss, batch: Batch, device, mini_batch_size: int, bf16: bool = False,
                    sizes: tuple[int, ...] = (), rows: int | None = None):
    """GradCache (Gao et al. 2021, arXiv 2101.06983): the whole batch's loss and gradients with the memory of
    one mini-batch. Embed each column mini-batch by mini-batch (a column's texts share its role's prompt)
    without gradients, take the loss's gradient with respect to those embeddings ``rows`` anchors at a time
    (default: the mini-batch size; GISTLoss.backward_by_rows), then embed each mini-batch again, with the
    same dropout, and push its part of that gradient through it. Gradients are averaged across ranks once,
    after the last."""
    size, states, cached = mini_batch_size, [], []
    pieces = [(c, batch.texts[c][start: start + size]) for c in batch.columns
              for start in range(0, len(batch.texts[c]), size)]
    with torch.no_grad():
        for c, texts in pieces:
            states.append(_rng_state(device))
            cached.append(student_forward(model, texts, device, bf16, model.prompts[COLUMN_ROLES[c]]))
    student = torch.cat(cached).requires_grad_()
    columns = dict(zip(batch.columns, student.split([len(batch.texts[c]) for c in batch.columns])))
    loss, masked = summed_over_sizes(lambda b: loss_fn.backward_by_rows(b, rows or size), batch.with_student(columns),
                                     sizes)
    for (c, texts), state, grad in zip(pieces, states, student.grad.split([len(t) for _, t in pieces])):
        with torch.random.fork_rng(devices=[device] if "cuda" in str(device) else []):
            _set_rng_state(state, device)
            student_forward(model, texts, device, bf16, model.prompts[COLUMN_ROLES[c]]).backward(grad)
    return loss, masked


def average_gradients(parameters, world: int) -> None:
    """All-reduce the gradients in one flat buffer. Instead of DDP's wrapper, which wants one forward pass per
    backward and the same passes on every rank, while a step here runs one per column (see train_step),
    GradCache one per mini-batch, and a rank whose anchors have no mined negatives one fewer."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    for g, part in zip(grads, torch.split(flat, [g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def global_mean(loss: torch.Tensor, masked: torch.Tensor, world: int) -> tuple[float, float]:
    """The figures of the global batch, not this rank's share (the loss is scaled so that its mean is)."""
    if world > 1:
        shown = torch.stack([loss, masked.to(loss.dtype)])
        dist.all_reduce(shown)
        loss, masked = shown / world
    return loss.item(), masked.item()


def _rng_state(device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if "cuda" in str(device) else None


def _set_rng_state(state: tuple, device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
