"""The Ray executor: a step's pending shards as tasks on Ray actors, the work directory the one state.

    python -m pipeline.embed ... --executor ray [--ray-address auto] [--gpus-per-task 1] [--max-retries 3]

One actor per worker calls ``step.open()`` once (a model or an index loads once per worker, not per shard),
then runs shards as they come (``ray.util.ActorPool``: a free actor takes the next shard, so uneven shards
balance). Each shard is written atomically and marked done by the worker that wrote it, on the shared work
directory, exactly as the local executor does, so the markers are the only record of progress: a rerun of
the same command after the driver died runs what has no valid marker, whichever executor runs it. A worker
process that dies mid-shard is restarted by Ray (``max_restarts``) and its shard retried (``max_task_retries``);
an error the step raises (bad input) is not retried: it stops the run as it would stop a local one.
"""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from gist_mining.errors import UsageError
from gist_mining.storage import remove_stale_temps

EXTRA = 'pip install -e ".[ray]"'


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError(f"--executor ray needs Ray, an optional extra: {EXTRA}") from None
    return ray


class ShardWorker:
    """One worker's state (``step.open()``, once per process: a restarted actor opens it again) and its shards."""

    def __init__(self, step):
        self.step, self.state = step, step.open()

    def run(self, i: int) -> None:
        self.step.run(self.state, i)
        self.step.shards.mark_done(i)

    def close(self) -> None:
        self.step.close(self.state)


def _connect(ray, settings) -> None:
    """The cluster at --ray-address, or a local one on this machine; a driver that already joined one keeps it."""
    if ray.is_initialized():
        return
    # The workers import this package from the driver's working directory (a checkout run without install).
    path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    ray.init(address=settings.ray_address, include_dashboard=False, log_to_driver=True,
             runtime_env={"env_vars": {"PYTHONPATH": path}})


def _worker_count(ray, settings, n_shards: int) -> int:
    """As many actors as the cluster fits (its CPUs, or GPUs for a GPU step), at most --max-concurrent-tasks and
    never more than the shards."""
    resources = ray.cluster_resources()
    fits = [int(resources.get("CPU", 1) // settings.cpus_per_task)] if settings.cpus_per_task else []
    fits += [int(resources.get("GPU", 0) // settings.gpus_per_task)] if settings.gpus_per_task else []
    count = min(fits) if fits else n_shards
    if settings.max_concurrent_tasks:
        count = min(count, settings.max_concurrent_tasks)
    if count < 1:
        raise UsageError(f"the Ray cluster ({resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs) cannot "
                         f"fit one task of --cpus-per-task {settings.cpus_per_task} --gpus-per-task {settings.gpus_per_task}")
    return min(count, n_shards)


def run_on_ray(step, settings) -> None:
    """Run ``step``'s pending shards on Ray under ``settings`` (``gist_mining.executor.ExecutorSettings``)."""
    ray = _import_ray()
    from ray.util import ActorPool

    todo = step.shards.pending(list(range(step.shards.n)))
    if not todo:
        return
    _connect(ray, settings)
    worker = ray.remote(num_cpus=settings.cpus_per_task, num_gpus=settings.gpus_per_task,
                        max_restarts=settings.max_retries, max_task_retries=settings.max_retries)(ShardWorker)
    count = _worker_count(ray, settings, len(todo))
    actors = [worker.remote(step) for _ in range(count)]
    print(f"{step.name}: {len(todo)} shard(s) on {count} Ray worker(s)", file=sys.stderr)
    try:
        done = ActorPool(actors).map_unordered(lambda actor, i: actor.run.remote(i), todo)
        for _ in tqdm(done, total=len(todo), unit="shard", desc=step.name, disable=len(todo) < 2):
            pass
        ray.get([actor.close.remote() for actor in actors])
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, UsageError):  # the step's own refusal: one line, exit 2, as locally
            raise err.cause from None
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
    # A worker killed mid-shard left its temporary file (named by its pid) behind; its retry wrote the shard.
    remove_stale_temps(step.shards.path(0).parent)
