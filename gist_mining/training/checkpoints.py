"""Checkpoints: everything a resumed run needs to continue exactly (weights, optimizer, schedule, random state,
where in which epoch), written atomically, and refused when another run's."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.storage import commit, read_json, remove_stale_temps, tmp_name, write_json_atomic
from gist_mining.training.config import TrainConfig, as_record
from gist_mining.training.output import save_files

# Settings that change neither the batches nor the updates: a run may resume with others.
NOT_IN_IDENTITY = {"resume", "eval", "eval_steps", "save_steps", "report_to", "push_to_hub"}


def run_identity(config: TrainConfig, mined_manifest: dict) -> dict:
    """What a checkpoint must share with the run that resumes it: the mined tables and every setting that
    changes the sequence of batches or updates."""
    settings = {k: v for k, v in as_record(config).items() if k not in NOT_IN_IDENTITY}
    settings["student"] = {k: v for k, v in settings["student"].items() if k != "device"}
    return {"mined_fingerprint": mined_manifest["fingerprint"], "settings": settings}


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, position: dict) -> None:
    final = out / workdir.CHECKPOINTS / workdir.checkpoint_name(step)
    tmp = tmp_name(final)
    save_files(model, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}, tmp / workdir.TRAINER_STATE)
    write_json_atomic(dict(position, step=step), tmp / workdir.POSITION)
    commit(tmp, final)  # a checkpoint directory exists whole or not at all


def latest_checkpoint(out: Path, identity: dict) -> Path | None:
    folder = out / workdir.CHECKPOINTS
    remove_stale_temps(folder)
    found = sorted(folder.glob(workdir.CHECKPOINT_GLOB)) if folder.exists() else []
    if found and read_json(found[-1] / workdir.POSITION).get("identity") != identity:
        raise UsageError(f"{found[-1]} was saved by a run with other mined tables or settings; "
                         "run without --resume to start over, or with the settings it was saved with")
    return found[-1] if found else None


def restore(checkpoint: Path, optimizer, scheduler) -> dict:
    """The optimizer, schedule and random state as ``checkpoint`` saved them; where the run stood."""
    state = torch.load(checkpoint / workdir.TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    position = read_json(checkpoint / workdir.POSITION)
    print(f"resuming from {checkpoint} at step {position['step']}", file=sys.stderr)
    return position
