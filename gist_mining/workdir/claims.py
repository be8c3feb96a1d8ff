"""Claims: whose plan a work directory holds. One process at a time claims (``locked``); another run's state is
refused, or with ``replace`` removed with everything made from it."""

from __future__ import annotations

import fcntl
import shutil
from contextlib import contextmanager
from pathlib import Path

from gist_mining.errors import UsageError
from gist_mining.storage import remove_stale_temps, write_json_atomic
from gist_mining.workdir.layout import FOLDERS, LOCK, STEPS, read_plan
from gist_mining.workdir.records import Record


@contextmanager
def locked(work: Path):
    """One process at a time claims plans and builds shared files (shard processes start together)."""
    Path(work).mkdir(parents=True, exist_ok=True)
    with open(Path(work) / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

def remove_steps(work: Path, first: str, last: str | None = None, keep: tuple[str, ...] = ()) -> None:
    """Delete what steps ``first`` .. ``last`` (default: the end of the chain) own, but the names in ``keep``."""
    names = list(STEPS)
    for step in names[names.index(first): names.index(last or names[-1]) + 1]:
        for name in (n for n in STEPS[step] if n not in keep):
            path = Path(work) / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

def claim(work: Path, step: str, plan: Record, *, replace: bool, refusal: str) -> bool:
    """Make ``plan`` (with its ``fingerprint``) the plan of ``step``; True when it resumes an equal plan.

    No readable plan: whatever the step and later steps hold comes from an unfinished or unknown run and is
    removed. Another plan: ``refusal`` is raised, unless ``replace``, which removes the step and every
    later one (the old state's descendants) first. Call under ``locked(work)``.
    """
    path = Path(work) / STEPS[step][0]
    old = read_plan(work, step)
    if old is not None and old["fingerprint"] == plan.fingerprint:
        return True
    if old is not None and not replace:
        raise UsageError(refusal)
    remove_steps(work, step)
    write_json_atomic(plan.to_json(), path)
    return False

def remove_temps(work: Path) -> None:
    for folder in (Path(work), *(Path(work) / f for f in FOLDERS)):
        remove_stale_temps(folder)
