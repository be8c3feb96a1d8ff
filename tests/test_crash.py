"""The crash test (tests/crash.py) at small size: killed, resumed and damaged stages end equal to clean runs."""

from __future__ import annotations

import crash
import pytest

pytestmark = pytest.mark.slow  # kills and reruns every stage (minutes)


def test_killed_and_damaged_stages_recover_exactly(tmp_path):
    # 120 pairs: 40 embedding shards, 120 mask shards, 30 training steps; about 100 s on 2 idle cores
    results, cases = crash.run(crash.parse_args(["--kills", "3", "--pairs", "120", "--seed", "0",
                                                 "--work-root", str(tmp_path / "crash")]))
    crash.report(results, cases)  # shown when the test fails
    assert [r.name for r in results] == ["embed", "mask", "refilter", "train"]
    assert all(r.kills > 0 for r in results), "a stage finished before any kill landed"
    assert {r.name: r.differences for r in results} == {r.name: [] for r in results}
    assert [c.name for c in cases if not c.repaired] == []
