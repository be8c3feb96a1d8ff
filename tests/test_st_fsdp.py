"""gist_mining.st under FSDP2 (torch's fully_shard, what accelerate's FSDP plugin applies on GPUs): two gloo processes
on CPU, each holding half of the student's parameters, gradients and optimizer state, train as one process does on the
global batch. accelerate does not shard on CPU (its FSDP plugin is honoured for GPU-like devices only; on CPU the
stock trainer wraps the model in DDP), so the shards are made here with fully_shard, as accelerate makes them."""

from __future__ import annotations

import os

import pytest
import torch
from test_st import collate, free_port, fresh, load, student, two_gloo_ranks, work  # noqa: F401  (fixtures)

from gist_mining.st import StoredGuideGISTLoss, mined_dataset

ANCHORS = 12  # the global batch; 6 a rank


def train_step(model, work, features, labels, mini_batch_size):  # noqa: F811
    """One optimizer step of StoredGuideGISTLoss: the loss, the gradients and the weights after the step. SGD with
    momentum, not AdamW: Adam divides by the gradient's size, so rounding noise on gradients that are zero in exact
    arithmetic (attention's key bias) becomes a step of lr in either direction."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = StoredGuideGISTLoss(model, work, mini_batch_size=mini_batch_size)(fresh(features), labels)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]  # the pooler has none
    optimizer.step()
    return loss.item(), grads, [p.detach().clone() for p in model.parameters()]


def _fsdp_worker(rank: int, world: int, port: int, work, student, out: dict):  # noqa: F811
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = mined_dataset(work, 2, short="drop").select(range(ANCHORS))
    share = rows.select(range(rank * ANCHORS // world, (rank + 1) * ANCHORS // world))
    for name, mini_batch_size in (("plain", None), ("cached", 2)):
        model = load(student)
        model.eval()  # no dropout: the same embeddings in every process
        for layer in model[0].model.encoder.layer:  # accelerate's transformer_layer_cls_to_wrap: BertLayer
            fully_shard(layer)
        fully_shard(model)  # the loss holds this same module: fully_shard shards it in place
        assert all(isinstance(p, DTensor) for p in model.parameters())
        features, labels = collate(model, share)
        value, grads, weights = train_step(model, work, features, labels, mini_batch_size)
        held = sum(p.to_local().numel() for p in model.parameters())
        out[rank, name] = (value, [g.full_tensor() for g in grads], [w.full_tensor() for w in weights], held)
    dist.destroy_process_group()


@pytest.mark.slow  # concurrent processes
def test_fully_sharded_two_gloo_processes_equal_one(work, student):  # noqa: F811
    model = load(student)
    model.eval()
    features, labels = collate(model, mined_dataset(work, 2, short="drop").select(range(ANCHORS)))
    value, grads, weights = train_step(model, work, features, labels, None)
    total = sum(p.numel() for p in model.parameters())
    out = two_gloo_ranks(_fsdp_worker, work, student)
    for name in ("plain", "cached"):
        ranks = [out[rank, name] for rank in (0, 1)]
        # each rank holds a half of every parameter (dim 0, padded): together the whole model, once
        assert sum(r[3] for r in ranks) == total and all(r[3] < 0.6 * total for r in ranks)
        # FSDP averages the gradients over ranks as DDP does: the ranks' mean loss is the global batch's
        assert (ranks[0][0] + ranks[1][0]) / 2 == pytest.approx(value, rel=1e-5)
        for rank in ranks:
            for mine, theirs in zip(rank[1], grads, strict=True):
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
            for mine, theirs in zip(rank[2], weights, strict=True):  # the sharded optimizer step, gathered
                torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
        assert any(not torch.equal(w, p) for w, p in zip(weights, load(student).parameters()))


def torchrun_st_fsdp_run(work_dir, model_path, out, sharding: str) -> tuple[list[dict], list[dict]]:
    """2 gloo processes of tests/st_fsdp_run.py: the logs, and each rank's peak memory and parameter values held."""
    import json
    import subprocess
    import sys

    from conftest import ROOT

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(free_port()),
                           str(ROOT / "tests" / "st_fsdp_run.py"), str(work_dir), str(model_path), str(out),
                           sharding], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return (json.loads((out / "log.json").read_text()),
            [json.loads((out / f"rank-{rank}.json").read_text()) for rank in (0, 1)])


@pytest.mark.slow  # torchrun, twice
def test_stock_trainer_under_fsdp2_equals_ddp(work, student, tmp_path):  # noqa: F811
    """The stock trainer under accelerate's FSDP2 (TrainingArguments fsdp="full_shard", fsdp_config version 2) on two
    gloo processes: each rank holds half the parameters, and the three steps' logged losses and gradient norms, and
    the saved model's weights, are plain DDP's (which test_st checks against one process)."""
    sharded, sharded_ranks = torchrun_st_fsdp_run(work, student, tmp_path / "fsdp", "full_shard")
    replicated, replicated_ranks = torchrun_st_fsdp_run(work, student, tmp_path / "ddp", "ddp")
    total = sum(p.numel() for p in load(student).parameters())
    assert [r["held"] for r in replicated_ranks] == [total, total]
    assert sum(r["held"] for r in sharded_ranks) == total and all(r["held"] < 0.6 * total for r in sharded_ranks)
    assert len(sharded) == 3
    for mine, theirs in zip(sharded, replicated, strict=True):
        assert mine["step"] == theirs["step"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert mine["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
    trained, oracle, start = load(tmp_path / "fsdp" / "model"), load(tmp_path / "ddp" / "model"), load(student)
    assert [type(m).__name__ for m in trained] == ["Transformer", "Pooling", "Normalize"]
    for (name, mine), theirs, before in zip(trained.state_dict().items(), oracle.state_dict().values(),
                                            start.state_dict().values(), strict=True):
        if name.endswith("key.bias"):
            # softmax ignores the key bias: its exact gradient is zero, and AdamW turns the rounding noise either run
            # has there into steps of up to lr (1e-3) each way; so only bounded
            assert (mine - before).abs().max() <= 3 * 1e-3 * 1.01
        else:
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), start.state_dict().values()))
