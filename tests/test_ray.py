"""The Ray executor on one local Ray (2 CPUs, started once for the module): a toy step, then the real stages, each
against a local run; a worker killed mid-shard, a driver killed mid-run. Every test on the Ray is in the slow tier
(its workers start in seconds each; `make test` runs it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, make_pairs, run_stage
from crash import compare_dirs

from gist_mining import workdir
from gist_mining.errors import UsageError
from gist_mining.executor import ExecutorSettings, run_step
from gist_mining.storage import write_parquet_atomic
from pipeline import embed, mask


@pytest.fixture(scope="module")
def cluster():
    """One local Ray for every test here (start-up costs ~5 s); workers import this checkout and tests/."""
    ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


ON_RAY = ExecutorSettings(executor="ray")


@dataclass
class ToyStep:
    """Shard i: rows i*10 .. i*10+9. Each open() leaves a file named by its pid; ``pause_on`` shard, on its first
    attempt, writes its pid to ``paused`` and sleeps (for the test to kill it)."""

    shards: workdir.Shards
    opened: Path
    pause_on: int | None = None
    name: str = "toy"

    @property
    def paused(self) -> Path:
        return self.opened / "paused"

    def open(self):
        (self.opened / str(os.getpid())).touch()
        return os.getpid()

    def run(self, pid, i):
        if i == self.pause_on and not self.paused.exists():
            self.paused.write_text(str(pid))
            time.sleep(120)
        write_parquet_atomic(pa.table({"value": list(range(i * 10, i * 10 + 10))}), self.shards.path(i))

    def close(self, pid):
        pass


def toy(tmp_path, n=6, **kwargs) -> ToyStep:
    (tmp_path / "opened").mkdir()
    return ToyStep(workdir.Shards(tmp_path / "w", "toy", n, "f" * 64), tmp_path / "opened", **kwargs)


def toy_values(step: ToyStep) -> list[int]:
    assert step.shards.complete() and not step.shards.pending(list(range(step.shards.n)))
    return [v for i in range(step.shards.n) for v in pq.read_table(step.shards.path(i))["value"].to_pylist()]


def test_without_ray_one_line_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where the extra is not installed
    with pytest.raises(UsageError, match=r'^--executor ray needs Ray, an optional extra: pip install -e "\.\[ray\]"$'):
        run_step(toy(tmp_path), ON_RAY)


@pytest.mark.slow
def test_toy_step_opens_once_per_worker(cluster, tmp_path):
    step = toy(tmp_path, n=8)
    run_step(step, ON_RAY)
    assert toy_values(step) == list(range(80))
    opened = {p.name for p in step.opened.iterdir()}
    assert len(opened) == 2 and str(os.getpid()) not in opened  # two actors (2 CPUs), each opened once, not per shard


@pytest.mark.slow
def test_worker_killed_mid_shard_is_retried(cluster, tmp_path):
    step = toy(tmp_path, pause_on=3)
    runner = threading.Thread(target=run_step, args=(step, ON_RAY))
    runner.start()
    deadline = time.monotonic() + 60
    while not (step.paused.exists() and step.paused.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = int(step.paused.read_text())
    os.kill(killed, signal.SIGKILL)
    runner.join(timeout=120)
    assert not runner.is_alive()
    assert toy_values(step) == list(range(60))
    # the restarted actor opened the step again, in a new process
    assert str(killed) in {p.name for p in step.opened.iterdir()} and len(list(step.opened.iterdir())) == 4
    assert not list((tmp_path / "w" / "toy").glob(".*"))  # the killed worker's temporary file is gone


@pytest.mark.slow
def test_a_step_refusal_is_one_line(cluster, tmp_path):
    class Refusing(ToyStep):
        def run(self, pid, i):
            raise UsageError(f"shard {i}: refused")

    step = Refusing(workdir.Shards(tmp_path / "w", "toy", 2, "f" * 64), tmp_path)
    with pytest.raises(UsageError, match=r"^shard \d: refused$"):
        run_step(step, ON_RAY)


# -- the real stages ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.parquet"
    make_pairs(120, seed=2).write_parquet(path)
    return path


def embed_args(pairs, work, model):
    return ["--input", pairs, "--work", work, "--guide", model, "--texts-per-shard", 16, "--no-cache"]


def differences(a: Path, b: Path) -> list[str]:
    """What differs between two work directories, but for the plans' commands (they name the executor)."""
    return [d for d in compare_dirs(a, b) if not d.endswith("differs in command")]


@pytest.mark.slow
def test_embed_and_mask_on_ray_equal_local_runs(cluster, tmp_path, pairs, tiny_guide):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert run_stage(embed, *embed_args(pairs, local, tiny_guide)) == 0
    assert run_stage(embed, *embed_args(pairs, on_ray, tiny_guide), "--executor", "ray") == 0
    assert differences(local, on_ray) == []
    mask_args = ["--k", 12, "--anchors-per-shard", 32]
    assert run_stage(mask, "--work", local, *mask_args) == 0
    assert run_stage(mask, "--work", on_ray, *mask_args, "--executor", "ray") == 0
    assert len(list((on_ray / "candidates").glob("shard-*.parquet"))) == 4
    assert differences(local, on_ray) == []
    # the grid on Ray (cells, then their merge) writes the single index's candidates and negatives too
    workdir.remove_steps(on_ray, "search")
    assert run_stage(mask, "--work", on_ray, *mask_args, "--executor", "ray", "--pool-slice-size", 40) == 0
    for folder in ("candidates", "mined"):
        assert pl.read_parquet(on_ray / folder / "*.parquet").equals(pl.read_parquet(local / folder / "*.parquet"))


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes(cluster, tmp_path, pairs, tiny_guide):
    """The driver SIGKILLed once the first shards are done: the same command again does the rest and the work
    directory equals an uninterrupted run's."""
    reference, work = tmp_path / "reference", tmp_path / "w"
    args = [*embed_args(pairs, work, tiny_guide), "--texts-per-shard", 2, "--executor", "ray", "--ray-address", cluster]
    assert run_stage(embed, *embed_args(pairs, reference, tiny_guide), "--texts-per-shard", 2) == 0
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    driver = subprocess.Popen([sys.executable, "-m", "pipeline.embed", *map(str, args)], cwd=ROOT, env=env,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list((work / "embeddings").glob("_shard-*.done")) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)
    done_at_kill = len(list((work / "embeddings").glob("_shard-*.done")))  # (its workers may finish a few more)
    driver.wait()
    n = len(list((reference / "embeddings").glob("shard-*.parquet")))
    assert 0 < done_at_kill < n and not (work / "embed_manifest.json").exists()
    assert run_stage(embed, *args) == 0
    assert differences(reference, work) == []
