"""The crash test (tests/crash.py) at small size: killed, resumed and damaged stages end equal to clean runs."""

from __future__ import annotations

import crash
import pytest

pytestmark = pytest.mark.slow  # kills and reruns every stage (minutes)


def test_killed_and_damaged_stages_recover_exactly(tmp_path):
    # 120 pairs: 40 embedding shards, 120 mask shards; about 80 s on 2 idle cores
    results, cases = crash.run(crash.parse_args(["--kills", "3", "--pairs", "120", "--seed", "0", "--stages",
                                                 "embed,mask,refilter", "--work-root", str(tmp_path / "crash")]))
    crash.report(results, cases)  # shown when the test fails
    assert [r.name for r in results] == ["embed", "mask", "refilter"]
    assert all(r.kills > 0 for r in results), "a stage finished before any kill landed"
    assert {r.name: r.differences for r in results} == {r.name: [] for r in results}
    assert [c.name for c in cases if not c.repaired] == []


def test_killed_training_resumes_exactly_with_one_and_two_processes(tmp_path):
    # train.run as a user runs it (plus a checkpoint every step), 16 steps, killed with SIGKILL at random
    # moments, one at least inside a checkpoint's write, then rerun until done: the model, its checkpoints and
    # the loss log equal an uninterrupted run's bit for bit; alone and as two gloo processes under torchrun.
    # 3 kills each, not 20: every rerun starts Python and torch again (three processes under torchrun), about
    # 150 s of CPU in all; tests/crash.py --stages train,train2 --kills 20 is the full test.
    results, _ = crash.run(crash.parse_args(["--kills", "3", "--pairs", "64", "--seed", "0", "--stages",
                                             "train,train2", "--work-root", str(tmp_path / "crash")]))
    crash.report(results, [])
    assert [r.name for r in results] == ["train", "train2"]
    assert all(r.kills > 0 for r in results), "a training run finished before any kill landed"
    assert sum(r.kills_mid_write for r in results) > 0, "no kill landed inside a checkpoint's write"
    assert {r.name: r.differences for r in results} == {r.name: [] for r in results}
