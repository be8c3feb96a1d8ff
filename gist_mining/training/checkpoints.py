"""Checkpoints: everything a resumed run needs to continue exactly (weights, optimizer, schedule, random state,
where in which epoch), written atomically, the newest ``keep_checkpoints`` kept; and the output folder's claim:
a rerun of the same run resumes (or, finished, does nothing), another run is refused unless --overwrite."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.storage import commit, read_json, remove_stale_temps, tmp_name, write_json_atomic
from gist_mining.training.config import TrainConfig, as_record
from gist_mining.training.output import save_files

# Settings that change neither the batches nor the updates: a run may resume with others.
NOT_IN_IDENTITY = {"resume", "overwrite", "eval", "eval_steps", "save_steps", "save_minutes", "keep_checkpoints",
                   "report_to", "push_to_hub", "guide_cache"}
# Settings added after runs were checkpointed: in the identity only away from their defaults, so those runs resume.
LATER = ("distill_corpus", "distill_margin_mse")


def run_identity(config: TrainConfig, mined_fingerprint: str, world: int = 1) -> dict:
    """What a checkpoint must share with the run that resumes it: the mined tables, the number of processes and
    every setting that changes the sequence of batches or updates."""
    settings = {k: v for k, v in as_record(config).items()
                if k not in NOT_IN_IDENTITY and not (k in LATER and v == getattr(TrainConfig, k))}
    settings["student"] = {k: v for k, v in settings["student"].items() if k != "device"}
    return {"mined_fingerprint": mined_fingerprint, "world_size": world, "settings": settings}


def differences(old: dict | None, new: dict) -> list[str]:
    """What differs between two run identities, as the options that set it ("an unknown run": no identity)."""
    if not old:
        return ["an unknown run (no record of its settings)"]
    named = [] if old.get("mined_fingerprint") == new["mined_fingerprint"] else ["mined tables"]
    if old.get("world_size") != new["world_size"]:
        named.append(f"number of processes ({old.get('world_size')} there, {new['world_size']} now)")
    settings = old.get("settings", {})
    for key, value in new["settings"].items():
        if isinstance(value, dict):
            named += [f"--{key}" if inner == "name" else f"{key} {inner}" for inner in value
                      if (settings.get(key) or {}).get(inner) != value[inner]]
        elif settings.get(key) != value:
            named.append(f"--{key.replace('_', '-')} ({settings.get(key)!r} there, {value!r} now)")
    return named


def checkpoints(out: Path) -> list[Path]:
    """The checkpoints in ``out``, oldest first (their names sort by step)."""
    folder = out / workdir.CHECKPOINTS
    return sorted(folder.glob(workdir.CHECKPOINT_GLOB)) if folder.exists() else []


def claim_output(out: Path, identity: dict, overwrite: bool, rank: int) -> workdir.TrainingRecord | None:
    """The finished run's record when ``out`` holds this run complete (nothing to do); else None, with ``out``
    ready to train into: its checkpoints (if any) this run's. Another run's record or checkpoints are refused
    in one line naming what differs, or with ``overwrite`` removed (and said so)."""
    remove_stale_temps(out)  # a loss log's rewrite cut short by a kill
    record = workdir.read_record(out / workdir.TRAINING_RECORD)
    record = workdir.TrainingRecord.from_json(record) if record else None
    found = checkpoints(out)
    newest = (workdir.read_record(found[-1] / workdir.POSITION) or {}) if found else {}
    held = record.identity if record else newest.get("identity")
    if (record is None and not found) or held == identity:
        return record  # None: nothing there yet, or this run unfinished
    what = ", ".join(differences(held, identity))
    if not overwrite:
        raise UsageError(f"{out} holds a training run with another {what}; pass --overwrite to start over (it removes "
                         "that run's checkpoints, metrics and record), or use another --out")
    if rank == 0:
        shutil.rmtree(out / workdir.CHECKPOINTS, ignore_errors=True)
        for name in (workdir.TRAINING_RECORD, workdir.METRICS):
            (out / name).unlink(missing_ok=True)
        print(f"train: --overwrite: removed the run in {out} made with another {what} ({len(found)} checkpoint(s), "
              "metrics, record)", file=sys.stderr)
    return None


def checkpoint_due(config: TrainConfig, step: int, total_steps: int, seconds_since_last: float, device,
                   world: int) -> bool:
    """--save-steps, --save-minutes, and the last step (a rerun after the loop finds the run at its end); under
    torchrun rank 0's clock decides for every rank, as saving gathers every rank's random state."""
    due = (step == total_steps or bool(config.save_steps and step % config.save_steps == 0)
           or bool(config.save_minutes and seconds_since_last >= 60 * config.save_minutes))
    if world > 1 and config.save_minutes:
        flag = torch.tensor([int(due)], device=device)
        dist.broadcast(flag, 0)
        due = bool(flag.item())
    return due


def random_states(device, world: int) -> list[dict]:
    """Every rank's random state, in rank order (a collective under torchrun): ranks draw their own dropout."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    own = torch.get_rng_state()
    if world == 1:
        return [{"torch_rng": own, "cuda_rng": cuda}]
    flat = torch.cat([own, *cuda]).to(device)
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    sizes = [own.numel(), *(c.numel() for c in cuda)]
    states = [[part.clone() for part in torch.split(g.cpu(), sizes)] for g in gathered]
    return [{"torch_rng": parts[0], "cuda_rng": parts[1:]} for parts in states]


def save_checkpoint(out: Path, step: int, model, optimizer, scheduler, position: dict, keep: int = 0,
                    states: list[dict] | None = None, loss_fn=None) -> None:
    """Checkpoint ``step`` (``states``: every rank's random state, random_states; default this process's; the
    loss's own parameters, embedding distillation's map), then remove the checkpoints older than the newest ``keep``
    (0: none)."""
    final = out / workdir.CHECKPOINTS / workdir.checkpoint_name(step)
    tmp = tmp_name(final)
    save_files(model, tmp)
    states = states or random_states(None, 1)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **states[0],
                "rng_per_rank": states, "loss": {} if loss_fn is None else loss_fn.state_dict()},
               tmp / workdir.TRAINER_STATE)
    write_json_atomic(dict(position, step=step), tmp / workdir.POSITION)
    commit(tmp, final)  # a checkpoint directory exists whole or not at all
    prune_checkpoints(out, keep)


def prune_checkpoints(out: Path, keep: int) -> None:
    """Remove the checkpoints older than the newest ``keep`` (0: keep all); also at a resumed start, for a run killed
    between writing a checkpoint and removing the old ones."""
    for old in checkpoints(out)[:-keep] if keep else []:
        gone = tmp_name(old)  # renamed first: a kill mid-removal leaves a temporary the next start removes
        old.rename(gone)
        shutil.rmtree(gone)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint in ``out``: this run's, as claim_output left ``out`` (another run's refused or removed)."""
    remove_stale_temps(out / workdir.CHECKPOINTS)
    found = checkpoints(out)
    return found[-1] if found else None


def restore(checkpoint: Path, optimizer, scheduler, rank: int = 0, loss_fn=None) -> dict:
    """The optimizer, schedule, the loss's own parameters and this rank's random state as ``checkpoint`` saved them;
    where the run stood."""
    state = torch.load(checkpoint / workdir.TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    if loss_fn is not None:
        loss_fn.load_state_dict(state.get("loss", {}))
    scheduler.load_state_dict(state["scheduler"])
    own = state.get("rng_per_rank", [state])[rank]  # a checkpoint of an earlier version holds rank 0's only
    torch.set_rng_state(own["torch_rng"])
    if own["cuda_rng"]:
        torch.cuda.set_rng_state_all(own["cuda_rng"])
    position = read_json(checkpoint / workdir.POSITION)
    print(f"resuming from {checkpoint} at step {position['step']}", file=sys.stderr)
    return position
