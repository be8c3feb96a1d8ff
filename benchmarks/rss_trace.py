"""Where a stage's peak memory comes from: run `-m module args` in this process while a thread samples VmRSS.

    python -m benchmarks.rss_trace -m pipeline.embed --input data/sample/train.parquet --work /tmp/w --no-cache

Every 20 ms a thread reads VmRSS from /proc/self/status; whenever it climbs past the previous high by 25 MiB it
records the main thread's innermost project and library frames. At the end it prints those steps (RSS, the
frames that were running) and the peak (VmHWM), so the lines just before the peak name what allocated it.
"""

from __future__ import annotations

import runpy
import sys
import threading
import time
import traceback
from pathlib import Path

from benchmarks.peak_rss import status_mib

STEP_MIB = 25


def where(frame) -> str:
    """The innermost frames of the main thread, project files first, as short file:line(function) items."""
    stack = traceback.extract_stack(frame)
    ours = [f for f in stack if "site-packages" not in f.filename and "/lib/python" not in f.filename]
    theirs = [f for f in stack if "site-packages" in f.filename]
    pick = ours[-2:] + theirs[-2:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno}({f.name})" for f in reversed(pick))


def sampler(main_id: int, steps: list, stop: threading.Event, started: float) -> None:
    high = 0.0
    while not stop.wait(0.02):
        now = status_mib("VmRSS")
        if now > high + STEP_MIB:
            high = now
            frame = sys._current_frames().get(main_id)
            steps.append((time.perf_counter() - started, now, where(frame) if frame else "?"))


def main() -> None:
    args = sys.argv[1:]
    if args[:1] != ["-m"] or len(args) < 2:
        raise SystemExit(__doc__)
    steps: list = []
    stop = threading.Event()
    started = time.perf_counter()
    thread = threading.Thread(target=sampler, args=(threading.get_ident(), steps, stop, started), daemon=True)
    thread.start()
    sys.argv = [args[1], *args[2:]]
    try:
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    except SystemExit as err:
        if err.code not in (0, None):
            raise
    finally:
        stop.set()
        thread.join()
    for seconds, mib, frames in steps:
        print(f"{seconds:7.1f}s {mib:7.0f} MiB  {frames}", file=sys.stderr)
    print(f"peak (VmHWM) {status_mib():.0f} MiB, at exit {status_mib('VmRSS'):.0f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
