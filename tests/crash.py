"""Crash test: SIGKILL each stage at random moments, resume it, and compare with an uninterrupted run.

    python tests/crash.py --kills 20 --seed 0 [--pairs 600] [--work-root DIR] [--stages train,train2]

On tiny random models (built on the fly, as in the test suite) and `--pairs` generated pairs, each stage
(embed, mask, mask --refilter, train with a checkpoint every step, and the same under torchrun with two gloo
processes: train2; --stages picks some, the ones they start from run uninterrupted) runs once uninterrupted into its own
directory and is rerun over a copy of that finished directory; then it runs in a third directory
where it is killed (SIGKILL to its process group) and restarted until `--kills` kills have landed, then
run to completion. The rerun's and the killed run's directories must equal the uninterrupted run's,
file for file: Parquet tables row for row with floats equal bit for bit, JSON equal but for timings,
model weights and trainer state tensor for tensor, anything else byte for byte, and no leftover files.

Kills land while the stage works, not only while Python imports: each run is killed after it has
written a random number of new shards or checkpoints (spread so that the kills cover the whole stage,
up to its finishing steps), plus a random part of the time one shard takes; sometimes instead late in
its start-up, which the rerun measures (having nothing to do, its wall time is the bare start-up); and for
a stage whose writes are seen as temporaries (a checkpoint being written or removed), one kill in three
lands as soon as one appears, inside the write. A kill reaches every process of the run, also those a
launcher started in sessions of their own (torchrun's workers). A run that ends before its kill ends the
kills for that stage.

Then a finished directory is damaged four ways (a truncated embedding shard, bytes flipped inside a
mined shard, a truncated completion marker, a deleted shard whose marker stays) and the stage rerun:
DETECTED when it exits 0 or 2 naming the file, REPAIRED when its outputs then equal the reference.
Exit status 1 when any directory differs or any damage is not repaired.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))
from conftest import build_tiny_model, make_pairs  # noqa: E402  (the test suite's tiny models and pairs)

STAGES = ("embed", "mask", "refilter", "train", "train2")
NEEDS = {"mask": "embed", "refilter": "mask", "train": "mask", "train2": "mask"}  # whose finished directory it reads


@dataclass
class Stage:
    name: str
    module: str
    argv: Callable[[Path], list]  # the command line's arguments for a run into the given directory
    seed: Path | None  # a finished directory every run starts from (copied), or None: an empty one
    units: tuple[str, ...]  # globs of the files that show its progress (shards, checkpoints)
    writing: tuple[str, ...] = ()  # globs of the temporaries that show a unit being written (or removed)
    # What it has done, where its units do not stay (only the newest checkpoints are kept): names of done units
    progress: Callable[[Path], set] | None = None
    env: dict = field(default_factory=dict)


@dataclass
class Kill:
    after_units: int  # new shards or checkpoints the run must write first (0: time from its start)
    delay: float  # then this many seconds more
    during_write: bool = False  # then as soon as a temporary of Stage.writing appears (or after ``delay``)


@dataclass
class Attempt:
    killed: bool
    rc: int | None
    seconds: float
    log: Path
    mid_write: bool = False  # killed while a temporary of Stage.writing was there


@dataclass
class StageResult:
    name: str
    runs: int = 0
    kills: int = 0
    kills_in_work: int = 0  # kills that landed after the run had written a shard or checkpoint
    kills_mid_write: int = 0  # kills that landed while a checkpoint was being written or removed
    finished_early: bool = False  # a run completed before its kill fired
    differences: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    name: str
    detected: bool
    repaired: bool
    detail: str


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python tests/crash.py", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per stage")
    parser.add_argument("--seed", type=int, default=0, help="seeds the pairs and the kill times")
    parser.add_argument("--pairs", type=int, default=600, help="generated pairs; sizes every stage's work")
    parser.add_argument("--work-root", type=Path, default=None, help="an empty or new folder (default: a temporary one, kept)")
    parser.add_argument("--stages", default=",".join(STAGES), help="the stages to kill, comma-separated")
    return parser.parse_args(argv)


# -- running a stage -------------------------------------------------------------------------------------


def start(stage: Stage, target: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **stage.env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        # A session of its own, so that one killpg reaches every process the stage started.
        return subprocess.Popen([sys.executable, "-m", stage.module, *map(str, stage.argv(target))], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def attempt(stage: Stage, target: Path, log: Path, kill: Kill | None = None, limit: float = 600) -> Attempt:
    """One run of the stage, SIGKILLed as ``kill`` says, or after ``limit`` seconds, unless it exits first.

    Kills are placed by the run's own progress, not by the clock alone: on a shared 2-core machine one run
    can take twice as long as the next, and a kill time taken from another run would often come too late.
    """
    began, since = time.perf_counter(), time.time()
    done_before = stage.progress(target) if stage.progress else set()
    proc = start(stage, target, log)
    fire_at = None  # set once the run has written the kill's shards
    while True:
        now = time.perf_counter() - began
        if proc.poll() is not None:
            return Attempt(False, proc.returncode, now, log)
        if kill is not None and fire_at is None and new_units(stage, target, since, done_before) >= kill.after_units:
            fire_at = now + kill.delay
        in_write = fire_at is not None and kill.during_write and writing(stage, target)
        if in_write or now >= (limit if fire_at is None else min(fire_at, limit)):
            kill_tree(proc.pid)
            mid_write = writing(stage, target)
            # It may have exited between the poll and the kill; then it was not killed.
            killed = proc.wait() == -signal.SIGKILL
            return Attempt(killed, None if killed else proc.returncode, now, log, killed and mid_write)
        time.sleep(0.002 if fire_at is not None and kill.during_write else 0.01)


def writing(stage: Stage, folder: Path) -> bool:
    return any(True for pattern in stage.writing for _ in folder.glob(pattern))


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone while we looked
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    return _tree(children, pid)


def _tree(children: dict[int, list[int]], pid: int) -> list[int]:
    return [c for child in children.get(pid, []) for c in (child, *_tree(children, child))]


def kill_tree(pid: int) -> None:
    """SIGKILL the run's process group and every process it started, also in sessions of their own: stopped
    first, so that none starts another or finishes its write in between."""
    stopped = set()
    for _ in range(3):  # a process forked while we looked is found on the next pass
        for p in [pid, *descendants(pid)]:
            if p not in stopped:
                try:
                    os.kill(p, signal.SIGSTOP)
                    stopped.add(p)
                except ProcessLookupError:
                    pass
    os.killpg(pid, signal.SIGKILL)
    for p in stopped:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def prepare(stage: Stage, target: Path) -> None:
    if stage.seed is not None:
        shutil.copytree(stage.seed, target)


def units(stage: Stage, folder: Path) -> list[Path]:
    return [p.relative_to(folder) for pattern in stage.units for p in folder.glob(pattern)]


def new_units(stage: Stage, folder: Path, since: float, done_before: set) -> int:
    if stage.progress:
        return len(stage.progress(folder) - done_before)
    count = 0
    for unit in units(stage, folder):
        try:
            count += (folder / unit).stat().st_mtime >= since
        except FileNotFoundError:  # replaced while we looked
            pass
    return count


def units_left(stage: Stage, reference: Path, target: Path) -> int:
    """How many of the reference run's shards or checkpoints ``target`` does not yet hold, byte for byte."""
    if stage.progress:
        return len(stage.progress(reference) - stage.progress(target))
    return sum(not (target / u).is_file() or (target / u).read_bytes() != (reference / u).read_bytes()
               for u in units(stage, reference))


def failed(what: str, run: Attempt) -> str:
    status = "was stopped at the time limit" if run.rc is None else f"exited {run.rc}"
    return f"{what} {status}: {last_line(run.log)} ({run.log})"


# -- kills -----------------------------------------------------------------------------------------------


def reference_runs(stage: Stage, root: Path, result: StageResult) -> tuple[float, float]:
    """The uninterrupted run, then a rerun over a copy of its finished directory, which must change nothing.
    Returns the bare start-up (the rerun's wall time: it has nothing to do) and the seconds between shards."""
    folder = root / stage.name
    prepare(stage, folder / "reference")
    whole = attempt(stage, folder / "reference", folder / "logs" / "reference.log")
    if whole.rc != 0:
        raise SystemExit(failed(f"{stage.name}: the uninterrupted run", whole))
    shutil.copytree(folder / "reference", folder / "rerun")
    rerun = attempt(stage, folder / "rerun", folder / "logs" / "rerun.log")
    if rerun.rc != 0:
        result.differences.append(failed("a rerun of the finished directory", rerun))
    result.differences += [f"rerun of the finished directory: {d}" for d in compare_dirs(folder / "reference", folder / "rerun")]
    written = sorted((folder / "reference" / u).stat().st_mtime for u in units(stage, folder / "reference"))
    return rerun.seconds, (written[-1] - written[0]) / (len(written) - 1) if len(written) > 1 else 0.1


def choose_kill(rng: random.Random, left: int, kills_left: int, startup: float, unit_seconds: float,
                first_write: bool = False) -> Kill:
    """On average this run writes 2/(kills_left + 1) of the shards left, so that the kills spread over the
    whole stage, the last ones reaching its finishing steps; the kill lands inside the next shard or, for
    none, late in the start-up; inside a write for one kill in three (and for the first that can,
    ``first_write``)."""
    n = rng.randint(0, min(left, max(1, round(2 * left / (kills_left + 1)))))
    during_write = bool(n) and (rng.random() < 1 / 3 or first_write)
    return Kill(n, rng.uniform(0.0, unit_seconds) if n else rng.uniform(0.8 * startup, startup),
                during_write=during_write)


def crash_stage(stage: Stage, root: Path, kills: int, rng: random.Random) -> StageResult:
    reference, crashed, logs = root / stage.name / "reference", root / stage.name / "crashed", root / stage.name / "logs"
    result = StageResult(stage.name)
    startup, unit_seconds = reference_runs(stage, root, result)
    prepare(stage, crashed)
    while result.kills < kills:
        kill = choose_kill(rng, units_left(stage, reference, crashed), kills - result.kills, startup, unit_seconds,
                           first_write=bool(stage.writing) and not result.kills_mid_write)
        run = attempt(stage, crashed, logs / f"run-{result.runs:03d}.log", kill)
        result.runs += 1
        if run.killed:
            result.kills += 1
            result.kills_in_work += kill.after_units > 0
            result.kills_mid_write += run.mid_write
        elif run.rc != 0:
            result.differences.append(failed(f"run {result.runs} (after {result.kills} kill(s))", run))
            return result
        else:
            result.finished_early = True  # nothing left to interrupt
            break
    final = attempt(stage, crashed, logs / "final.log")
    result.runs += 1
    if final.rc != 0:
        result.differences.append(failed("the final run", final))
    result.differences += compare_dirs(reference, crashed)
    return result


# -- comparing two directories ---------------------------------------------------------------------------


def is_timing(key: str) -> bool:
    return key in ("seconds", "timing") or key.endswith("_seconds")


def normalized(value, folders: tuple[str, str]):
    """JSON without timings, with the directories' paths replaced: they differ between the two runs, and a
    copied directory holds records naming the one it was copied from."""
    if isinstance(value, dict):
        return {k: normalized(v, folders) for k, v in value.items() if not is_timing(k)}
    if isinstance(value, list):
        return [normalized(v, folders) for v in value]
    if isinstance(value, str):
        return value.replace(folders[0], "<dir>").replace(folders[1], "<dir>")
    return value


def compare_json(a, b, folders: tuple[str, str]) -> str | None:
    a, b = normalized(a, folders), normalized(b, folders)
    if a == b:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        return "differs in " + ", ".join(sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k)))
    return "differs"


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def float_bytes(column: pa.ChunkedArray) -> bytes | None:
    """The raw bits of a column's floats, lists flattened; None for a column without floats."""
    values = column.combine_chunks()
    while pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).tobytes() if pa.types.is_floating(values.type) else None


def compare_parquet(a: Path, b: Path) -> str | None:
    try:
        ta, tb = pq.read_table(a), pq.read_table(b)
    except Exception as err:  # noqa: BLE001  (a damaged file is a finding, not a crash of the test)
        return f"unreadable: {err}"
    if ta.schema != tb.schema:
        return f"schema differs: {tb.schema} vs {ta.schema}"
    if ta.num_rows != tb.num_rows:
        return f"{tb.num_rows} rows, expected {ta.num_rows}"
    for name in ta.column_names:
        if not ta[name].equals(tb[name]):
            row = next(i for i, (x, y) in enumerate(zip(ta[name].to_pylist(), tb[name].to_pylist())) if x != y)
            return f"column {name} differs from row {row}"
        if float_bytes(ta[name]) != float_bytes(tb[name]):
            return f"column {name}: equal values but different float bits"
    return None


def same_tensors(a, b) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_tensors(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_tensors, a, b))
    return a == b


def compare_file(a: Path, b: Path, folders: tuple[str, str]) -> str | None:
    if a.suffix == ".parquet":
        return compare_parquet(a, b)
    try:
        if a.suffix in (".json", ".done"):  # completion markers are JSON too
            return compare_json(json.loads(a.read_text()), json.loads(b.read_text()), folders)
        if a.suffix == ".jsonl":
            return compare_json(read_jsonl(a), read_jsonl(b), folders)
        if a.suffix == ".md":  # the model card names the work and output folders, and is titled by the latter
            untitled = [[line for line in p.read_text().splitlines() if not line.startswith("# ")] for p in (a, b)]
            return compare_json(*untitled, folders)
        if a.suffix == ".safetensors":
            from safetensors.torch import load_file

            return None if same_tensors(load_file(a), load_file(b)) else "tensors differ"
        if a.suffix == ".pt":
            import torch

            return None if same_tensors(torch.load(a, weights_only=True), torch.load(b, weights_only=True)) else "tensors differ"
    except Exception as err:  # noqa: BLE001
        return f"unreadable: {type(err).__name__}: {err}"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def listing(folder: Path) -> set[Path]:
    """Every file, and every hidden (temporary) file or folder once, as paths relative to ``folder``."""
    found = set()
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        hidden = next((i for i, part in enumerate(rel.parts) if part.startswith(".")), None)
        if hidden is not None:
            found.add(Path(*rel.parts[: hidden + 1]))
        elif path.is_file():
            found.add(rel)
    return found


def compare_dirs(reference: Path, got: Path) -> list[str]:
    want, have = listing(reference), listing(got)
    differences = [f"missing {rel}" for rel in sorted(want - have)]
    differences += [f"{'leftover temporary' if rel.name.startswith('.') else 'extra'} {rel}" for rel in sorted(have - want)]
    for rel in sorted(want & have):
        if (reference / rel).is_file():
            problem = compare_file(reference / rel, got / rel, (str(reference), str(got)))
            if problem:
                differences.append(f"{rel}: {problem}")
    return differences


# -- damage ----------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()  # its completion marker stays


CASES = [  # (stage, file in its finished directory, damage, what the damage is)
    ("embed", "embeddings/shard-00001.parquet", truncate, "truncated to half"),
    ("mask", "mined/shard-00001.parquet", flip_bytes, "16 bytes flipped in the middle"),
    ("embed", "embeddings/_shard-00002.done", truncate, "completion marker truncated to half"),
    ("mask", "candidates/shard-00002.parquet", delete, "deleted, its marker kept"),
]


def damage_case(stage: Stage, rel: str, damage, what: str, root: Path) -> CaseResult:
    reference = root / stage.name / "reference"
    work = root / "damage" / f"{stage.name}-{rel.replace('/', '-')}"
    shutil.copytree(reference, work)
    name = f"{stage.name}: {rel} {what}"
    if not (work / rel).exists():
        return CaseResult(name, False, False, f"no {rel} in a finished {stage.name} directory")
    damage(work / rel)
    run = attempt(stage, work, root / "damage" / "logs" / f"{work.name}.log")
    detected = run.rc in (0, 2) and rel in run.log.read_text(errors="replace")
    differences = compare_dirs(reference, work) if run.rc == 0 else []
    detail = failed("rerun", run)
    if differences:
        detail += f"; {len(differences)} difference(s), first: {differences[0]}"
    return CaseResult(name, detected, run.rc == 0 and not differences, detail)


# -- the whole test --------------------------------------------------------------------------------------


def make_stages(root: Path, pairs: int) -> list[Stage]:
    """Sizes chosen so each stage has many shards or checkpoints to interrupt (600 pairs: 40-text shards)."""
    data, guide, student = root / "pairs.parquet", root / "models" / "guide" / "st", root / "models" / "student" / "st"
    mask_args = ["--k", 20, "--anchors-per-shard", max(1, pairs // 200)]
    # Batch size 1 stretches the embed stage's work against its start-up (torch and transformers imports); without
    # the embedding cache, each rerun computes what it embeds.
    embed_args = ["--input", data, "--guide", guide, "--device", "cpu", "--encode-batch-size", 1,
                  "--texts-per-shard", max(4, pairs // 15), "--no-cache"]
    # The command as a user runs it (checkpoints and resuming are the defaults), with a checkpoint every step; the
    # newest two are kept, so progress is read from the loss log. train2: two gloo processes of 4 anchors each.
    train_args = ["--work", root / "mask" / "reference", "--student", student, "--device", "cpu",
                  "--max-steps", max(8, pairs // 4), "--save-steps", 1]
    checkpoints = {"units": ("checkpoints/step-*/model.safetensors",), "writing": ("checkpoints/.step-*",),
                   "progress": logged_steps}
    return [
        Stage("embed", "pipeline.embed", lambda d: [*embed_args, "--work", d], None, ("embeddings/shard-*.parquet",)),
        Stage("mask", "pipeline.mask", lambda d: ["--work", d, *mask_args], root / "embed" / "reference",
              ("candidates/shard-*.parquet", "mined/shard-*.parquet")),
        Stage("refilter", "pipeline.mask",
              lambda d: ["--work", d, *mask_args, "--refilter", "--margin-strategy", "absolute", "--margin", 0.1],
              root / "mask" / "reference", ("mined/shard-*.parquet",)),
        Stage("train", "train.run", lambda d: [*train_args, "--batch-size", 8, "--out", d], None, **checkpoints),
        Stage("train2", "torch.distributed.run",
              lambda d: ["--nproc-per-node", 2, "--master-port", free_port(), "-m", "train.run", *train_args,
                         "--batch-size", 4, "--out", d], None, env={"OMP_NUM_THREADS": "1"}, **checkpoints),
    ]


def logged_steps(out: Path) -> set:
    """The steps train.run's loss log holds (a line cut short by a kill aside)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return set()
    steps = set()
    for line in lines:
        try:
            steps.add(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


def free_port() -> int:
    """A port nobody holds now, for torchrun's rendezvous: runs beside this one cannot collide."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def run(args: argparse.Namespace) -> tuple[list[StageResult], list[CaseResult]]:
    root = args.work_root or Path(tempfile.mkdtemp(prefix="gist-crash-"))
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    root.mkdir(parents=True, exist_ok=True)
    print(f"crash test in {root}", flush=True)
    build_tiny_model(root / "models" / "guide", seed=1)
    build_tiny_model(root / "models" / "student", seed=4)  # dropout on: resuming must restore the RNG too
    make_pairs(args.pairs, seed=args.seed).write_parquet(root / "pairs.parquet")
    stages = make_stages(root, args.pairs)
    chosen = args.stages.split(",")
    if set(chosen) - set(STAGES):
        raise SystemExit(f"--stages: unknown {', '.join(sorted(set(chosen) - set(STAGES)))}; known: {', '.join(STAGES)}")
    needed = set(chosen)
    for name in reversed(STAGES):
        if name in needed and name in NEEDS:
            needed.add(NEEDS[name])
    results = []
    for stage in (s for s in stages if s.name in needed):
        started = time.perf_counter()
        if stage.name not in chosen:  # only what a chosen stage starts from
            reference_only(stage, root)
            continue
        results.append(crash_stage(stage, root, args.kills, random.Random(f"{args.seed}-{stage.name}")))
        print(f"{stage.name}: {results[-1].kills} kill(s), {len(results[-1].differences)} difference(s) "
              f"in {time.perf_counter() - started:.0f}s", flush=True)
    by_name = {stage.name: stage for stage in stages}
    cases = [damage_case(by_name[stage], rel, damage, what, root) for stage, rel, damage, what in CASES
             if stage in chosen]
    return results, cases


def reference_only(stage: Stage, root: Path) -> None:
    prepare(stage, root / stage.name / "reference")
    whole = attempt(stage, root / stage.name / "reference", root / stage.name / "logs" / "reference.log")
    if whole.rc != 0:
        raise SystemExit(failed(f"{stage.name}: the uninterrupted run", whole))


def grouped(differences: list[str]) -> list[str]:
    """One line per kind of difference (numbers aside: shards, steps, process ids), counting the others."""
    groups: dict[str, list[str]] = {}
    for difference in differences:
        groups.setdefault(re.sub(r"\d+", "#", difference), []).append(difference)
    return [g[0] + (f"  (and {len(g) - 1} more like it)" if len(g) > 1 else "") for g in groups.values()]


def report(results: list[StageResult], cases: list[CaseResult]) -> None:
    print(f"\n{'stage':<10}{'kills':>6}{'in work':>9}{'mid-write':>11}{'resumes':>9}{'differences':>13}")
    for r in results:
        note = "  (a run finished before its kill)" if r.finished_early else ""
        print(f"{r.name:<10}{r.kills:>6}{r.kills_in_work:>9}{r.kills_mid_write:>11}{r.runs - 1:>9}"
              f"{len(r.differences):>13}{note}")
    for r in results:
        for line in grouped(r.differences):
            print(f"  {r.name}: {line}")
    print()
    for case in cases:
        print(f"{'DETECTED' if case.detected else 'NOT DETECTED':<13} {'REPAIRED' if case.repaired else 'NOT REPAIRED':<13}"
              f"{case.name}\n{'':<27}{case.detail}")


def main(argv=None) -> int:
    results, cases = run(parse_args(argv))
    report(results, cases)
    return 1 if any(r.differences for r in results) or not all(c.repaired for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
