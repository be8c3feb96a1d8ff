"""Who runs a stage's shards: one protocol for the step, one layer for the executors (datatrove's split).

A stage (embed; mask = search then mine) is a typed plan with its fingerprint, prepared on the driver (read
the inputs, claim the work directory under its lock, write its tables), then a **step** over shards that an
executor runs, then a finish on the driver (the manifest). The step does not know which executor runs it:

- ``local``: this process does its share of the shards (``--num-shards``/``--shard-index``, or torchrun's
  ``RANK``/``WORLD_SIZE`` with ``--num-shards auto``; a Slurm job array runs one process per share), one
  after the other, after opening the step once.
- ``ray``: every pending shard is a Ray task (``gist_mining.ray_executor.run_on_ray``, the ``[ray]`` extra).

Either way a shard is written atomically by ``step.run`` and marked done by the executor afterwards
(``workdir.Shards.mark_done``), so a shard killed midway is redone by the next run, never trusted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from typing import Protocol

from tqdm import tqdm

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.settings import flag_of, option

EXECUTORS = ("local", "ray")


class ShardStep(Protocol):
    """One step of a stage over its shards. Picklable: it holds typed settings and paths, never a loaded model
    or index (``open`` makes those where the shards run)."""

    name: str  # "embed", "search", "mine": the log's prefix
    shards: workdir.Shards  # n, path(i), marker(i), pending(), mark_done(i), fingerprint

    def open(self) -> object:
        """What a worker needs for every shard (a model, an index, a vector store): made once per process or actor."""

    def run(self, state: object, i: int) -> None:
        """Write shard ``i`` atomically (the executor marks it done)."""

    def close(self, state: object) -> None:
        """After a worker's last shard: say what it did (cache hits, reused lists); release what it holds."""


@dataclass(frozen=True)
class ExecutorSettings:
    """Which executor runs a step's shards, and what each of its tasks gets."""

    executor: str = option("local", "who runs the shards: this process (its share, see --num-shards), or Ray tasks",
                           choices=EXECUTORS)
    num_shards: str = option("1", "local: processes sharing this run (a job array, ranks); "
                                  "'auto': torchrun's WORLD_SIZE and RANK")
    shard_index: int | None = option(None, "local: this process's part, 0 <= I < --num-shards (default 0)", type=int)
    ray_address: str | None = option(None, "ray: the cluster to join, e.g. ray://head:10001 or auto "
                                           "(default: start a local Ray)")
    gpus_per_task: float = option(0.0, "ray: GPUs each shard task (each embed actor) holds")
    cpus_per_task: float = option(1.0, "ray: CPUs each shard task holds")
    max_retries: int = option(3, "ray: times a task whose worker died is retried")
    max_concurrent_tasks: int | None = option(None, "ray: shard tasks running at once (default: as the cluster allows)",
                                              type=int)

    def __post_init__(self):
        if self.executor == "ray":
            local_only = [flag_of(f) for f in fields(self)
                          if f.name in ("num_shards", "shard_index") and getattr(self, f.name) != f.default]
            if local_only:
                raise UsageError(f"--executor ray schedules every shard itself; drop {' and '.join(local_only)}")


def share(settings: ExecutorSettings, n_shards: int, stage: str) -> list[int]:
    """The shards this process does, said in the log. Never guessed from the environment unless asked:
    launchers other than torchrun (accelerate, deepspeed, Slurm wrappers) set WORLD_SIZE too."""
    world = os.environ.get("WORLD_SIZE")
    if settings.num_shards == "auto":
        if settings.shard_index is not None:
            raise UsageError("--shard-index comes from RANK with --num-shards auto; give one or the other")
        processes, index = int(world or 1), int(os.environ.get("RANK", 0))
    else:
        try:
            processes, index = int(settings.num_shards), settings.shard_index or 0
        except ValueError:
            raise UsageError(f"--num-shards must be a number or 'auto', not {settings.num_shards!r}") from None
        if world and int(world) > 1 and processes == 1:
            print(f"{stage}: WORLD_SIZE={world} is set, but this process does every shard; "
                  "pass --num-shards auto to split the work across ranks", file=sys.stderr)
    if processes < 1 or not 0 <= index < processes:
        raise UsageError(f"--shard-index must be in [0, {processes}) and --num-shards >= 1")
    shards = [s for s in range(n_shards) if s % processes == index]
    print(f"{stage}: process {index} of {processes} does {len(shards)} of {n_shards} shard(s)"
          f"{': ' + _ranges(shards) if processes > 1 else ''}", file=sys.stderr)
    return shards


def _ranges(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (f", ... ({len(values)} in all)" if len(values) > 8 else "")


def run_step(step: ShardStep, settings: ExecutorSettings) -> None:
    """Run the pending shards of ``step``: this process's share of them (local), or all of them on Ray."""
    if settings.executor == "ray":
        try:
            from gist_mining.ray_executor import run_on_ray
        except ModuleNotFoundError as err:
            if err.name != "gist_mining.ray_executor":
                raise
            raise UsageError("--executor ray: this install has no Ray executor yet (gist_mining.ray_executor)") from None
        run_on_ray(step, settings)
    else:
        run_locally(step, settings)


def run_locally(step: ShardStep, settings: ExecutorSettings) -> None:
    run_here(step, share(settings, step.shards.n, step.name))


def run_here(step: ShardStep, assigned: list[int]) -> None:
    """Do the pending shards of ``assigned`` in this process, marking each done."""
    todo = step.shards.pending(assigned)
    if len(todo) < len(assigned):
        print(f"{step.name}: {len(assigned) - len(todo)} of this process's {len(assigned)} shard(s) already done",
              file=sys.stderr)
    if not todo:
        return
    state = step.open()
    for i in tqdm(todo, unit="shard", desc=step.name, disable=len(todo) < 2):
        step.run(state, i)
        step.shards.mark_done(i)
    step.close(state)
